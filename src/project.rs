//! A project on disk: its settings and every definition file, parsed.

use crate::ast::Definitions;
use crate::diagnostic::Diagnostic;
use crate::settings::{self, Settings, SettingsFile};
use crate::span::{FileId, Files};
use crate::{syntax, yaml};
use std::path::{Path, PathBuf};

/// Settings, definition files and what they define, before resolution.
#[derive(Debug)]
pub struct Project {
    pub settings: Settings,
    pub files: Files,
    pub definitions: Definitions,
}

/// Loads a project: settings from `root/tally.yaml` (and `overrides`), then every `.tally`,
/// `.yaml` and `.yml` file under the definitions folder, in path order. Returns what was
/// read and every problem found while reading.
pub fn load(root: &Path, overrides: &SettingsFile) -> Result<(Project, Vec<Diagnostic>), (Files, Vec<Diagnostic>)> {
    let mut files = Files::default();
    let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    if !root.is_dir() {
        return Err((
            files,
            vec![Diagnostic::usage(
                "E0001",
                format!("project folder `{}` not found", root.display()),
            )],
        ));
    }
    let settings = match settings::load(&root, overrides, &mut files) {
        Ok(s) => s,
        Err(d) => return Err((files, d)),
    };
    let mut diags = Vec::new();
    let mut paths = Vec::new();
    if settings.definitions.is_dir() {
        collect(&settings.definitions, &settings.reports, &mut paths);
    } else if settings.definitions.is_file() {
        paths.push(settings.definitions.clone());
    } else {
        diags.push(Diagnostic::usage(
            "E0002",
            format!("definitions folder `{}` not found", settings.definitions.display()),
        ));
    }
    paths.sort();
    let mut definitions = Definitions::default();
    for path in paths {
        let name = path
            .strip_prefix(std::env::current_dir().unwrap_or_default())
            .or_else(|_| path.strip_prefix(&root))
            .unwrap_or(&path)
            .display()
            .to_string();
        let (defs, file_diags) = read_file(&mut files, name, &path);
        definitions.extend(defs);
        diags.extend(file_diags);
    }
    Ok((
        Project {
            settings,
            files,
            definitions,
        },
        diags,
    ))
}

/// Reads and parses one definition file.
pub fn read_file(files: &mut Files, name: String, path: &Path) -> (Definitions, Vec<Diagnostic>) {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            return (
                Definitions::default(),
                vec![Diagnostic::error("E0003", format!("cannot read `{name}`: {e}")).file(name)],
            );
        }
    };
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let at = e.utf8_error().valid_up_to();
            let valid = String::from_utf8_lossy(&e.as_bytes()[..at]).into_owned();
            let id = files.add(name.clone(), path.to_path_buf(), valid);
            let end = files.get(id).text.len();
            return (
                Definitions::default(),
                vec![
                    Diagnostic::error(
                        "E0004",
                        format!("`{name}` is not a text file (invalid UTF-8 at byte {at})"),
                    )
                    .at(crate::span::Span::new(id, end, end), "the text stops being UTF-8 here")
                    .note("definition files are UTF-8 text"),
                ],
            );
        }
    };
    let id: FileId = files.add(name, path.to_path_buf(), text);
    let text = files.get(id).text.clone();
    if is_yaml(path) {
        yaml::parse_file(id, &text)
    } else {
        syntax::parse_file(id, &text)
    }
}

fn is_yaml(path: &Path) -> bool {
    matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
}

fn collect(dir: &Path, skip: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        let hidden = p
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if hidden || p == skip {
            continue;
        }
        if p.is_dir() {
            collect(&p, skip, out);
        } else if matches!(p.extension().and_then(|e| e.to_str()), Some("tally" | "yaml" | "yml"))
            && p.file_name().and_then(|n| n.to_str()) != Some("tally.yaml")
            && !is_test_file(&p)
        {
            out.push(p);
        }
    }
}

/// `*.test.yaml`: tests of definitions, not definitions.
fn is_test_file(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.ends_with(".test.yaml") || n.ends_with(".test.yml"))
}

/// Every test file (`*.test.yaml`) under the definitions folder, in path order, read.
pub fn load_tests(project: &mut Project) -> (Vec<crate::ast::TestDef>, Vec<Diagnostic>) {
    let mut paths = Vec::new();
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if is_test_file(&p) {
                out.push(p);
            }
        }
    }
    walk(&project.settings.definitions, &mut paths);
    paths.sort();
    let mut tests = Vec::new();
    let mut diags = Vec::new();
    for path in paths {
        let name = path
            .strip_prefix(&project.settings.root)
            .unwrap_or(&path)
            .display()
            .to_string();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                diags.push(Diagnostic::error("E0003", format!("cannot read `{name}`: {e}")).file(name));
                continue;
            }
        };
        let id = project.files.add(name, path.clone(), text);
        let text = project.files.get(id).text.clone();
        let (t, d) = yaml::parse_tests(id, &text);
        tests.extend(t);
        diags.extend(d);
    }
    (tests, diags)
}
