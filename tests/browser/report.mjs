// Opens a report page in headless Chromium and prints what a reader would see, as JSON:
// console errors, network requests, the KPI tiles, and whether the page fits a phone.
// Usage: node report.mjs PAGE.html SCREENSHOT_PREFIX
import { chromium } from "playwright-core";
import { pathToFileURL } from "node:url";

const [page_path, shot] = process.argv.slice(2);
const url = pathToFileURL(page_path).href;
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-background-networking", "--disable-component-update"],
});
const out = { console_errors: [], page_errors: [], requests: [], views: {} };
for (const [name, viewport] of [
  ["laptop", { width: 1366, height: 900 }],
  ["phone", { width: 390, height: 844 }],
]) {
  const context = await browser.newContext({ viewport, offline: true });
  const page = await context.newPage();
  page.on("console", (m) => {
    if (m.type() === "error" || m.type() === "warning") out.console_errors.push(`${m.type()}: ${m.text()}`);
  });
  page.on("pageerror", (e) => out.page_errors.push(String(e)));
  page.on("request", (r) => {
    if (r.url() !== url) out.requests.push(r.url());
  });
  await page.goto(url, { waitUntil: "load" });
  await page.screenshot({ path: `${shot}-${name}.png`, fullPage: true });
  out.views[name] = await page.evaluate(() => ({
    title: document.title,
    tiles: [...document.querySelectorAll("section[data-report]")].flatMap((s) =>
      [...s.querySelectorAll(".tile")].map((t) => ({
        report: s.dataset.report,
        metric: t.dataset.metric,
        value: t.querySelector(".value").textContent.trim(),
        label: t.querySelector(".label").textContent.trim(),
        charts: t.querySelectorAll("svg polyline").length,
      })),
    ),
    // Wider than the screen: the reader has to scroll the page sideways.
    overflow: document.documentElement.scrollWidth > window.innerWidth + 1,
    scripts: document.scripts.length,
  }));
  await context.close();
}
await browser.close();
console.log(JSON.stringify(out, null, 2));
