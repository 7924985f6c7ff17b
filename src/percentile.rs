//! An exact `percentile_cont` aggregate.
//!
//! DataFusion 55's `percentile_cont` quantizes the interpolation weight to 1e-6 and
//! truncates it (`(fraction * 1e6) as usize`), so `percentile(x, 90%)` can differ from every
//! other engine in the 8th significant digit. This one keeps the values of each group,
//! sorts them and interpolates between the closest ranks in full f64 precision.

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Float64Type};
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{Accumulator, AggregateUDF, AggregateUDFImpl, Expr, Signature, Volatility};
use std::sync::Arc;

/// `percentile(x, p)` as an aggregate expression over a Float64 argument.
pub fn percentile(arg: Expr, p: f64) -> Expr {
    AggregateUDF::from(Percentile::new(p)).call(vec![arg])
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Percentile {
    /// The fraction's bits (f64 is neither Eq nor Hash).
    p: u64,
    name: String,
    signature: Signature,
}

impl Percentile {
    fn new(p: f64) -> Self {
        Percentile {
            p: p.to_bits(),
            name: format!("percentile_{}", p),
            signature: Signature::exact(vec![DataType::Float64], Volatility::Immutable),
        }
    }
}

impl AggregateUDFImpl for Percentile {
    fn name(&self) -> &str {
        &self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }

    fn accumulator(&self, _: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(Values {
            p: f64::from_bits(self.p),
            values: Vec::new(),
        }))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        let item = Arc::new(Field::new_list_field(DataType::Float64, true));
        Ok(vec![Arc::new(Field::new(
            format!("{}_values", args.name),
            DataType::List(item),
            true,
        ))])
    }
}

#[derive(Debug)]
struct Values {
    p: f64,
    values: Vec<f64>,
}

impl Accumulator for Values {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let a = values[0].as_primitive::<Float64Type>();
        self.values.extend(a.iter().flatten());
        Ok(())
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let lists = states[0].as_list::<i32>();
        for i in 0..lists.len() {
            if lists.is_valid(i) {
                let v = lists.value(i);
                self.values.extend(v.as_primitive::<Float64Type>().iter().flatten());
            }
        }
        Ok(())
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let values: Vec<ScalarValue> = self.values.iter().map(|v| ScalarValue::Float64(Some(*v))).collect();
        Ok(vec![ScalarValue::List(ScalarValue::new_list_nullable(
            &values,
            &DataType::Float64,
        ))])
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(ScalarValue::Float64(interpolate(&mut self.values, self.p)))
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.values.capacity() * std::mem::size_of::<f64>()
    }
}

/// The `p` quantile by linear interpolation between closest ranks; `None` for no values.
fn interpolate(values: &mut [f64], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable_by(f64::total_cmp);
    let pos = p * (values.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    Some(values[lo] + (values[hi] - values[lo]) * (pos - lo as f64))
}

#[cfg(test)]
mod tests {
    use super::interpolate;

    #[test]
    fn interpolates_between_closest_ranks() {
        assert_eq!(interpolate(&mut [10.0, 40.0, 100.0, 250.5], 0.75), Some(137.625));
        assert_eq!(interpolate(&mut [3.0, 1.0, 2.0], 0.5), Some(2.0));
        assert_eq!(interpolate(&mut [5.0], 0.9), Some(5.0));
        assert_eq!(interpolate(&mut [], 0.9), None);
        // 0.9 * 10 = 9.000000000000002: the weight is not truncated to 1e-6 steps
        let mut xs: Vec<f64> = (0..11).map(|i| i as f64 * 1000.0 + 0.15).collect();
        assert!((interpolate(&mut xs, 0.9).unwrap() - 9000.15).abs() < 1e-9);
    }
}
