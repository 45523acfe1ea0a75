//! JSON schemas for structured output and tool arguments, without a derive: a small trait,
//! impls for the std types, a builder for objects, and a validator that explains failures with
//! JSON paths (so an answer can be sent back to the model with what to fix).
//!
//! ```
//! use serde::Deserialize;
//! use tidewater_llm::schema::{self, JsonSchema, ObjectSchema};
//!
//! #[derive(Deserialize)]
//! struct Person { name: String, age: u8, email: Option<String> }
//!
//! impl JsonSchema for Person {
//!     fn json_schema() -> serde_json::Value {
//!         ObjectSchema::new()
//!             .field::<String>("name", "full name")
//!             .field::<u8>("age", "age in years")
//!             .optional::<String>("email", "an e-mail address, if given")
//!             .build()
//!     }
//! }
//!
//! let bad = serde_json::json!({"name": "Ada", "age": -3});
//! let errors = schema::validate(&Person::json_schema(), &bad).unwrap_err();
//! assert_eq!(errors[0].to_string(), "$.age: -3 is less than the minimum 0");
//! ```
//!
//! Supported keywords: `type`, `properties`, `required`, `additionalProperties`, `items`,
//! `enum`, `const`, `minimum`, `maximum`, `exclusiveMinimum`, `exclusiveMaximum`, `minLength`,
//! `maxLength`, `minItems`, `maxItems`, `anyOf`, `oneOf`, `allOf`. Others (`pattern`, `format`,
//! `$ref`) are ignored by the validator.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

/// A type that can describe itself as a JSON schema.
///
/// Implemented for strings, numbers, booleans, `Option`, `Vec`, maps with string keys and
/// `serde_json::Value`; implement it for your structs with [`ObjectSchema`].
pub trait JsonSchema {
    /// The schema of the type's JSON form.
    fn json_schema() -> Value;

    /// A short name for the schema (sent to the server with structured output).
    fn schema_name() -> Cow<'static, str> {
        let full = std::any::type_name::<Self>();
        let base = full.split('<').next().unwrap_or(full);
        Cow::Owned(base.rsplit("::").next().unwrap_or(base).to_string())
    }

    /// Whether the value may be absent: `Option` says yes, so [`ObjectSchema::field`] does not
    /// list it as required.
    #[doc(hidden)]
    fn optional() -> bool {
        false
    }
}

impl JsonSchema for String {
    fn json_schema() -> Value {
        json!({"type": "string"})
    }
}

impl JsonSchema for bool {
    fn json_schema() -> Value {
        json!({"type": "boolean"})
    }
}

macro_rules! unsigned {
    ($($t:ty),*) => {$(
        impl JsonSchema for $t {
            fn json_schema() -> Value {
                json!({"type": "integer", "minimum": 0, "maximum": <$t>::MAX})
            }
        }
    )*};
}
unsigned!(u8, u16, u32, u64, usize);

macro_rules! signed {
    ($($t:ty),*) => {$(
        impl JsonSchema for $t {
            fn json_schema() -> Value {
                json!({"type": "integer", "minimum": <$t>::MIN, "maximum": <$t>::MAX})
            }
        }
    )*};
}
signed!(i8, i16, i32, i64, isize);

impl JsonSchema for f32 {
    fn json_schema() -> Value {
        json!({"type": "number"})
    }
}

impl JsonSchema for f64 {
    fn json_schema() -> Value {
        json!({"type": "number"})
    }
}

impl JsonSchema for Value {
    fn json_schema() -> Value {
        json!({})
    }
}

impl JsonSchema for () {
    fn json_schema() -> Value {
        json!({"type": "object", "properties": {}, "additionalProperties": false})
    }
}

impl<T: JsonSchema> JsonSchema for Option<T> {
    fn json_schema() -> Value {
        json!({"anyOf": [T::json_schema(), {"type": "null"}]})
    }
    fn optional() -> bool {
        true
    }
}

impl<T: JsonSchema> JsonSchema for Vec<T> {
    fn json_schema() -> Value {
        json!({"type": "array", "items": T::json_schema()})
    }
}

impl<T: JsonSchema> JsonSchema for Box<T> {
    fn json_schema() -> Value {
        T::json_schema()
    }
}

impl<T: JsonSchema> JsonSchema for BTreeMap<String, T> {
    fn json_schema() -> Value {
        json!({"type": "object", "additionalProperties": T::json_schema()})
    }
}

impl<T: JsonSchema, S> JsonSchema for HashMap<String, T, S> {
    fn json_schema() -> Value {
        json!({"type": "object", "additionalProperties": T::json_schema()})
    }
}

/// Builds the schema of a JSON object, field by field.
///
/// ```
/// use tidewater_llm::schema::{ObjectSchema, string_enum};
/// let s = ObjectSchema::new()
///     .description("a weather query")
///     .field::<String>("city", "the city")
///     .property("unit", string_enum(["celsius", "fahrenheit"]), "the unit", false)
///     .build();
/// assert_eq!(s["required"], serde_json::json!(["city"]));
/// assert_eq!(s["additionalProperties"], false);
/// ```
#[derive(Debug, Clone, Default)]
pub struct ObjectSchema {
    properties: Map<String, Value>,
    required: Vec<String>,
    description: Option<String>,
}

impl ObjectSchema {
    /// An object with no properties yet.
    pub fn new() -> ObjectSchema {
        ObjectSchema::default()
    }

    /// Describes the object.
    pub fn description(mut self, text: impl Into<String>) -> ObjectSchema {
        self.description = Some(text.into());
        self
    }

    /// A field of type `T`; required unless `T` is an `Option`.
    pub fn field<T: JsonSchema>(self, name: &str, description: &str) -> ObjectSchema {
        let required = !T::optional();
        self.property(name, T::json_schema(), description, required)
    }

    /// A field of type `T` that may be missing or `null`.
    pub fn optional<T: JsonSchema>(self, name: &str, description: &str) -> ObjectSchema {
        self.property(name, Option::<T>::json_schema(), description, false)
    }

    /// A field with a hand-written schema.
    pub fn property(
        mut self,
        name: &str,
        mut schema: Value,
        description: &str,
        required: bool,
    ) -> ObjectSchema {
        if !description.is_empty() {
            if let Value::Object(map) = &mut schema {
                map.insert("description".into(), Value::String(description.into()));
            }
        }
        self.properties.insert(name.to_string(), schema);
        if required {
            self.required.push(name.to_string());
        }
        self
    }

    /// The schema (extra properties are not allowed).
    pub fn build(self) -> Value {
        let mut map = Map::new();
        map.insert("type".into(), "object".into());
        if let Some(description) = self.description {
            map.insert("description".into(), description.into());
        }
        map.insert("properties".into(), Value::Object(self.properties));
        map.insert("required".into(), self.required.into());
        map.insert("additionalProperties".into(), false.into());
        Value::Object(map)
    }
}

/// The schema of a string that must be one of `values`.
pub fn string_enum<'a>(values: impl IntoIterator<Item = &'a str>) -> Value {
    json!({"type": "string", "enum": values.into_iter().collect::<Vec<_>>()})
}

/// A value of the shape `schema` describes, with placeholders: each string is `<its
/// description>` (or `<its name>`), an enum its first value, a number `1`, an array one item,
/// an optional value its non-null form. Small models follow an example far better than a
/// schema (they tend to copy the schema's own keywords), so the modes that put the schema in
/// the prompt show this too.
///
/// ```
/// use serde_json::json;
/// use tidewater_llm::schema::{ObjectSchema, example_of, string_enum};
/// let schema = ObjectSchema::new()
///     .field::<String>("customer", "who ordered")
///     .property("currency", string_enum(["EUR", "USD"]), "", true)
///     .field::<Vec<u32>>("quantities", "")
///     .optional::<String>("note", "")
///     .build();
/// assert_eq!(
///     example_of(&schema),
///     json!({"customer": "<who ordered>", "currency": "EUR", "quantities": [1], "note": "<note>"})
/// );
/// ```
pub fn example_of(schema: &Value) -> Value {
    example_named(schema, "value")
}

fn example_named(schema: &Value, name: &str) -> Value {
    if let Some(first) = schema["enum"].as_array().and_then(|values| values.first()) {
        return first.clone();
    }
    if let Some(options) = schema["anyOf"].as_array().or(schema["oneOf"].as_array()) {
        let option = options
            .iter()
            .find(|option| option["type"] != "null")
            .or(options.first());
        return option.map_or(Value::Null, |option| example_named(option, name));
    }
    let ty = match &schema["type"] {
        Value::Array(types) => types
            .iter()
            .filter_map(Value::as_str)
            .find(|ty| *ty != "null")
            .unwrap_or("null"),
        other => other.as_str().unwrap_or("object"),
    };
    match ty {
        "object" => {
            let mut map = serde_json::Map::new();
            if let Some(properties) = schema["properties"].as_object() {
                for (key, property) in properties {
                    map.insert(key.clone(), example_named(property, key));
                }
            }
            Value::Object(map)
        }
        "array" => Value::Array(vec![example_named(&schema["items"], name)]),
        "string" => {
            let label = schema["description"]
                .as_str()
                .filter(|d| !d.is_empty())
                .unwrap_or(name);
            Value::String(format!("<{label}>"))
        }
        "integer" => json!(1),
        "number" => json!(1.0),
        "boolean" => json!(false),
        _ => Value::Null,
    }
}

/// One way a value breaks a schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaError {
    /// Where, as a JSON path (`$.items[2].price`).
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for SchemaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

impl std::error::Error for SchemaError {}

/// Checks `value` against `schema`.
///
/// # Errors
/// Every violation found, each with its JSON path.
pub fn validate(schema: &Value, value: &Value) -> Result<(), Vec<SchemaError>> {
    let mut errors = Vec::new();
    check(schema, value, "$", &mut errors);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn has_type(value: &Value, ty: &str) -> bool {
    match ty {
        "number" => value.is_number(),
        "integer" => match value {
            Value::Number(n) => {
                n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0)
            }
            _ => false,
        },
        other => type_name(value) == other,
    }
}

fn short(value: &Value) -> String {
    crate::error::excerpt(&value.to_string(), 60)
}

fn check(schema: &Value, value: &Value, path: &str, errors: &mut Vec<SchemaError>) {
    let Value::Object(schema) = schema else {
        // `true` accepts everything, `false` nothing.
        if schema == &Value::Bool(false) {
            errors.push(err(path, "no value is allowed here"));
        }
        return;
    };
    if let Some(ty) = schema.get("type") {
        let types: Vec<&str> = match ty {
            Value::String(t) => vec![t.as_str()],
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if !types.is_empty() && !types.iter().any(|t| has_type(value, t)) {
            errors.push(err(
                path,
                format!(
                    "expected {}, found {} {}",
                    types.join(" or "),
                    type_name(value),
                    short(value)
                ),
            ));
            return;
        }
    }
    if let Some(Value::Array(allowed)) = schema.get("enum") {
        if !allowed.contains(value) {
            let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
            errors.push(err(
                path,
                format!("{} is not one of {}", short(value), list.join(", ")),
            ));
        }
    }
    if let Some(expected) = schema.get("const") {
        if expected != value {
            errors.push(err(
                path,
                format!("expected {expected}, found {}", short(value)),
            ));
        }
    }
    if let Some(n) = value.as_f64() {
        let bound = |key: &str| schema.get(key).and_then(Value::as_f64);
        if let Some(min) = bound("minimum").filter(|&m| n < m) {
            errors.push(err(
                path,
                format!("{value} is less than the minimum {}", num(min)),
            ));
        }
        if let Some(max) = bound("maximum").filter(|&m| n > m) {
            errors.push(err(
                path,
                format!("{value} is more than the maximum {}", num(max)),
            ));
        }
        if let Some(min) = bound("exclusiveMinimum").filter(|&m| n <= m) {
            errors.push(err(path, format!("{value} must be more than {}", num(min))));
        }
        if let Some(max) = bound("exclusiveMaximum").filter(|&m| n >= m) {
            errors.push(err(path, format!("{value} must be less than {}", num(max))));
        }
    }
    let count = |key: &str| schema.get(key).and_then(Value::as_u64);
    if let Value::String(s) = value {
        let len = s.chars().count() as u64;
        if let Some(min) = count("minLength").filter(|&m| len < m) {
            errors.push(err(
                path,
                format!("the string is shorter than {min} characters"),
            ));
        }
        if let Some(max) = count("maxLength").filter(|&m| len > m) {
            errors.push(err(
                path,
                format!("the string is longer than {max} characters"),
            ));
        }
    }
    if let Value::Array(items) = value {
        let len = items.len() as u64;
        if let Some(min) = count("minItems").filter(|&m| len < m) {
            errors.push(err(
                path,
                format!("expected at least {min} items, found {len}"),
            ));
        }
        if let Some(max) = count("maxItems").filter(|&m| len > m) {
            errors.push(err(
                path,
                format!("expected at most {max} items, found {len}"),
            ));
        }
        if let Some(item_schema) = schema.get("items") {
            for (i, item) in items.iter().enumerate() {
                check(item_schema, item, &format!("{path}[{i}]"), errors);
            }
        }
    }
    if let Value::Object(fields) = value {
        if let Some(Value::Array(required)) = schema.get("required") {
            for name in required.iter().filter_map(Value::as_str) {
                if !fields.contains_key(name) {
                    errors.push(err(path, format!("missing required property `{name}`")));
                }
            }
        }
        let properties = schema.get("properties").and_then(Value::as_object);
        for (name, field) in fields {
            let field_path = format!("{path}.{name}");
            match properties.and_then(|p| p.get(name)) {
                Some(field_schema) => check(field_schema, field, &field_path, errors),
                None => match schema.get("additionalProperties") {
                    Some(Value::Bool(false)) => {
                        errors.push(err(path, format!("unexpected property `{name}`")));
                    }
                    Some(extra @ Value::Object(_)) => check(extra, field, &field_path, errors),
                    _ => {}
                },
            }
        }
    }
    if let Some(Value::Array(all)) = schema.get("allOf") {
        for sub in all {
            check(sub, value, path, errors);
        }
    }
    for (key, exactly_one) in [("anyOf", false), ("oneOf", true)] {
        if let Some(Value::Array(options)) = schema.get(key) {
            let mut first_failure = Vec::new();
            let mut passing = 0;
            for sub in options {
                let mut sub_errors = Vec::new();
                check(sub, value, path, &mut sub_errors);
                if sub_errors.is_empty() {
                    passing += 1;
                } else if first_failure.is_empty() {
                    first_failure = sub_errors;
                }
            }
            if passing == 0 {
                if options.len() == 2 && options.iter().any(|o| o["type"] == "null") {
                    // `Option<T>`: report the inner schema's errors, they are the useful ones.
                    errors.extend(first_failure);
                } else {
                    errors.push(err(
                        path,
                        format!("{} matches none of the allowed shapes", short(value)),
                    ));
                }
            } else if exactly_one && passing > 1 {
                errors.push(err(path, "matches more than one of the `oneOf` shapes"));
            }
        }
    }
}

fn num(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        n.to_string()
    }
}

fn err(path: &str, message: impl Into<String>) -> SchemaError {
    SchemaError {
        path: path.to_string(),
        message: message.into(),
    }
}

/// Finds the JSON in a model's answer: the answer itself, or the inside of a ```` ```json ````
/// fence, or the span from the first `{`/`[` to the last `}`/`]`.
///
/// ```
/// use tidewater_llm::schema::extract_json;
/// assert_eq!(extract_json("Sure!\n```json\n{\"a\": 1}\n```"), Some("{\"a\": 1}"));
/// assert_eq!(extract_json("The answer: {\"a\": 1}."), Some("{\"a\": 1}"));
/// assert_eq!(extract_json("no json here"), None);
/// ```
pub fn extract_json(text: &str) -> Option<&str> {
    let trimmed = text.trim();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        return Some(trimmed);
    }
    if let Some(start) = trimmed.find("```") {
        let after = &trimmed[start + 3..];
        let body_start = after.find('\n').map_or(0, |i| i + 1);
        let body = &after[body_start..];
        if let Some(end) = body.find("```") {
            let inner = body[..end].trim();
            if !inner.is_empty() {
                return Some(inner);
            }
        }
    }
    let start = trimmed.find(['{', '['])?;
    let end = trimmed.rfind(['}', ']'])?;
    (end > start).then(|| &trimmed[start..=end])
}

/// Parses a model's answer as `T`: finds the JSON, validates it against `schema`, and
/// deserializes it.
///
/// # Errors
/// A message for the model saying what is wrong (not JSON, which paths break the schema, or
/// the deserializer's complaint).
pub fn parse_structured<T: DeserializeOwned>(text: &str, schema: &Value) -> Result<T, String> {
    let json =
        extract_json(text).ok_or_else(|| "the answer contains no JSON object".to_string())?;
    let value: Value =
        serde_json::from_str(json).map_err(|e| format!("the answer is not valid JSON: {e}"))?;
    if let Err(errors) = validate(schema, &value) {
        let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
        return Err(list.join("; "));
    }
    serde_json::from_value(value).map_err(|e| format!("the JSON does not fit the type: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invoice_schema() -> Value {
        let item = ObjectSchema::new()
            .field::<String>("name", "")
            .field::<u32>("quantity", "")
            .property(
                "price",
                json!({"type": "number", "exclusiveMinimum": 0}),
                "",
                true,
            )
            .build();
        ObjectSchema::new()
            .field::<String>("number", "")
            .property(
                "items",
                json!({"type": "array", "items": item, "minItems": 1}),
                "",
                true,
            )
            .optional::<String>("note", "")
            .property("currency", string_enum(["EUR", "USD"]), "", true)
            .build()
    }

    #[test]
    fn accepts_a_valid_value() {
        let v = json!({"number": "A-1", "currency": "EUR", "note": null,
                       "items": [{"name": "tea", "quantity": 2, "price": 3.5}]});
        assert_eq!(validate(&invoice_schema(), &v), Ok(()));
    }

    #[test]
    fn reports_every_violation_with_its_path() {
        let v = json!({"number": 7, "currency": "GBP", "extra": true,
                       "items": [{"name": "tea", "quantity": -1, "price": 0}]});
        let errors: Vec<String> = validate(&invoice_schema(), &v)
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            errors,
            [
                "$.currency: \"GBP\" is not one of \"EUR\", \"USD\"",
                "$: unexpected property `extra`",
                "$.items[0].price: 0 must be more than 0",
                "$.items[0].quantity: -1 is less than the minimum 0",
                "$.number: expected string, found integer 7",
            ]
        );
    }

    #[test]
    fn reports_missing_fields_and_empty_arrays() {
        let v = json!({"items": []});
        let errors: Vec<String> = validate(&invoice_schema(), &v)
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            errors,
            [
                "$: missing required property `number`",
                "$: missing required property `currency`",
                "$.items: expected at least 1 items, found 0",
            ]
        );
    }

    #[test]
    fn option_reports_the_inner_error() {
        let s = Option::<u8>::json_schema();
        assert_eq!(validate(&s, &Value::Null), Ok(()));
        let e = validate(&s, &json!(300)).unwrap_err();
        assert_eq!(e[0].message, "300 is more than the maximum 255");
    }

    #[test]
    fn parse_structured_explains_failures() {
        #[derive(serde::Deserialize, Debug)]
        struct P {
            #[expect(dead_code, reason = "only deserialized")]
            name: String,
        }
        let s = ObjectSchema::new().field::<String>("name", "").build();
        assert!(parse_structured::<P>("```json\n{\"name\": \"x\"}\n```", &s).is_ok());
        assert_eq!(
            parse_structured::<P>("{\"name\": 1}", &s).unwrap_err(),
            "$.name: expected string, found integer 1"
        );
        assert!(
            parse_structured::<P>("{\"name\": ", &s)
                .unwrap_err()
                .starts_with("the answer is not valid JSON")
        );
        assert_eq!(
            parse_structured::<P>("I cannot", &s).unwrap_err(),
            "the answer contains no JSON object"
        );
    }

    #[test]
    fn schema_names_are_short() {
        assert_eq!(<Vec<String>>::schema_name(), "Vec");
        assert_eq!(String::schema_name(), "String");
    }
}
