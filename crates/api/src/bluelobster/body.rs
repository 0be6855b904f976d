//! Request bodies are read as JSON values and checked field by field, so that every schema
//! violation is reported the way the spec's FastAPI server reports it (422, `loc`, `msg`,
//! `type`) — all of them at once, not just the first.

use super::error::BlError;
use axum::body::Bytes;
use lobster_core::validate::Check;
use lobster_core::{Error, FieldError};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

pub fn invalid(errors: Vec<FieldError>) -> BlError {
    BlError(Error::Invalid(errors))
}

/// Parses a required JSON object body.
pub fn object(bytes: &Bytes) -> Result<Map<String, Value>, BlError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(invalid(vec![FieldError::new(
            &["body"],
            "missing",
            "Field required",
        )]));
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => match m.iter().find(|(k, v)| has_nul(k, v)) {
            Some((k, _)) => Err(invalid(vec![FieldError::new(
                &["body", k],
                "value_error",
                "Value error, NUL characters are not allowed",
            )])),
            None => Ok(m),
        },
        Ok(other) => Err(invalid(vec![FieldError::new(
            &["body"],
            "model_attributes_type",
            "Input should be a valid dictionary or object to extract fields from",
        )
        .with_input(other)])),
        Err(e) => Err(invalid(vec![FieldError::new(
            &["body"],
            "json_invalid",
            format!("JSON decode error: {e}"),
        )])),
    }
}

/// Whether a NUL character is in `key` or anywhere in `v`. PostgreSQL cannot store one in
/// text (a write would fail as a 500), and a SQLite deployment that stored one could not be
/// moved to PostgreSQL; JSON can carry it as `\u0000`.
fn has_nul(key: &str, v: &Value) -> bool {
    key.contains('\0')
        || match v {
            Value::String(s) => s.contains('\0'),
            Value::Array(a) => a.iter().any(|v| has_nul("", v)),
            Value::Object(m) => m.iter().any(|(k, v)| has_nul(k, v)),
            _ => false,
        }
}

/// Collects field errors while reading a body object.
pub struct Fields<'a> {
    obj: &'a Map<String, Value>,
    pub errors: Vec<FieldError>,
}

impl<'a> Fields<'a> {
    pub fn new(obj: &'a Map<String, Value>) -> Self {
        Fields {
            obj,
            errors: Vec::new(),
        }
    }

    fn err(
        &mut self,
        name: &str,
        kind: &'static str,
        msg: impl Into<String>,
        input: Option<&Value>,
    ) {
        let mut e = FieldError::new(&["body", name], kind, msg);
        if let Some(v) = input {
            e = e.with_input(v.clone());
        }
        self.errors.push(e);
    }

    fn missing(&mut self, name: &str) {
        self.err(name, "missing", "Field required", None);
    }

    /// A string that must be present (null counts as absent for optional fields only).
    pub fn req_str(&mut self, name: &str) -> Option<String> {
        match self.obj.get(name) {
            None => {
                self.missing(name);
                None
            }
            Some(v) => self.string(name, v),
        }
    }

    pub fn opt_str(&mut self, name: &str) -> Option<String> {
        match self.obj.get(name) {
            None | Some(Value::Null) => None,
            Some(v) => self.string(name, v),
        }
    }

    /// A string that may be sent as null, told apart from one not sent: None when absent,
    /// `Some(None)` for null.
    pub fn nullable_str(&mut self, name: &str) -> Option<Option<String>> {
        match self.obj.get(name) {
            None => None,
            Some(Value::Null) => Some(None),
            Some(v) => self.string(name, v).map(Some),
        }
    }

    /// An integer that may be sent as null, told apart from one not sent (as `nullable_str`).
    pub fn nullable_int(&mut self, name: &str) -> Option<Option<i64>> {
        match self.obj.get(name) {
            None => None,
            Some(Value::Null) => Some(None),
            Some(v) => self.int(name, v, i64::MIN, i64::MAX).map(Some),
        }
    }

    fn string(&mut self, name: &str, v: &Value) -> Option<String> {
        match v {
            Value::String(s) => Some(s.clone()),
            other => {
                self.err(
                    name,
                    "string_type",
                    "Input should be a valid string",
                    Some(other),
                );
                None
            }
        }
    }

    /// Applies a format check; keeps the value only when it passes.
    pub fn check(&mut self, name: &str, v: Option<String>, f: fn(&str) -> Check) -> Option<String> {
        let s = v?;
        match f(&s) {
            Ok(()) => Some(s),
            Err((kind, msg)) => {
                self.err(name, kind, msg, Some(&Value::String(s)));
                None
            }
        }
    }

    pub fn req_int(&mut self, name: &str, min: i64, max: i64) -> Option<i64> {
        match self.obj.get(name) {
            None => {
                self.missing(name);
                None
            }
            Some(v) => self.int(name, v, min, max),
        }
    }

    fn int(&mut self, name: &str, v: &Value, min: i64, max: i64) -> Option<i64> {
        let n = match v {
            Value::Number(n) if n.is_i64() => n.as_i64(),
            Value::Number(n) => match n.as_f64() {
                Some(f) if f.fract() == 0.0 && f.abs() < 9e15 => Some(f as i64),
                // Whole numbers beyond i64: out of range on the side of their sign.
                Some(f) if f.fract() == 0.0 => Some(if f > 0.0 { i64::MAX } else { i64::MIN }),
                Some(_) => {
                    self.err(
                        name,
                        "int_from_float",
                        "Input should be a valid integer, got a number with a fractional part",
                        Some(v),
                    );
                    return None;
                }
                None => None,
            },
            Value::String(s) => match super::int_text(s) {
                Some(n) => Some(n),
                None => {
                    self.err(
                        name,
                        "int_parsing",
                        "Input should be a valid integer, unable to parse string as an integer",
                        Some(v),
                    );
                    return None;
                }
            },
            _ => None,
        };
        let Some(n) = n else {
            self.err(name, "int_type", "Input should be a valid integer", Some(v));
            return None;
        };
        if n < min {
            self.err(
                name,
                "greater_than_equal",
                format!("Input should be greater than or equal to {min}"),
                Some(v),
            );
            return None;
        }
        if n > max {
            self.err(
                name,
                "less_than_equal",
                format!("Input should be less than or equal to {max}"),
                Some(v),
            );
            return None;
        }
        Some(n)
    }

    /// A boolean (or 0/1), or null.
    pub fn opt_bool(&mut self, name: &str) -> Option<bool> {
        match self.obj.get(name) {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(Value::Number(n)) if n.as_i64() == Some(0) || n.as_i64() == Some(1) => {
                Some(n.as_i64() == Some(1))
            }
            Some(other) => {
                self.err(
                    name,
                    "bool_type",
                    "Input should be a valid boolean",
                    Some(other),
                );
                None
            }
        }
    }

    /// An integer without bounds, or null.
    pub fn opt_int(&mut self, name: &str) -> Option<i64> {
        match self.obj.get(name) {
            None | Some(Value::Null) => None,
            Some(v) => self.int(name, v, i64::MIN, i64::MAX),
        }
    }

    /// `{string: string}` or null.
    pub fn opt_string_map(&mut self, name: &str) -> Option<BTreeMap<String, String>> {
        match self.obj.get(name) {
            None | Some(Value::Null) => None,
            Some(Value::Object(m)) => {
                let mut out = BTreeMap::new();
                for (k, v) in m {
                    match v {
                        Value::String(s) => {
                            out.insert(k.clone(), s.clone());
                        }
                        other => self.errors.push(
                            FieldError::new(
                                &["body", name, k],
                                "string_type",
                                "Input should be a valid string",
                            )
                            .with_input(other.clone()),
                        ),
                    }
                }
                Some(out)
            }
            Some(other) => {
                self.err(
                    name,
                    "dict_type",
                    "Input should be a valid dictionary",
                    Some(other),
                );
                None
            }
        }
    }

    /// Ends parsing: Ok when no field failed.
    pub fn finish(self) -> Result<(), BlError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(invalid(self.errors))
        }
    }
}
