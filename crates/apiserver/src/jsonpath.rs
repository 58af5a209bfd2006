//! The subset of Kubernetes JSONPath used by printer columns and field selectors:
//! `.a.b`, `.a[0]`, `.a[*].b`, `.a['x.y']`, `.a[?(@.type=="Ready")].status`, with an
//! optional `{}` wrapper. Never panics on any input; an unparsable path yields nothing.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Field(String),
    Index(usize),
    All,
    Filter(String, String),
}

fn parse(path: &str) -> Option<Vec<Step>> {
    let p = path.trim();
    let p = p
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .unwrap_or(p);
    let p = p.strip_prefix('$').unwrap_or(p);
    let b: Vec<char> = p.chars().collect();
    let mut i = 0;
    let mut steps = Vec::new();
    while i < b.len() {
        match b[i] {
            '.' => {
                i += 1;
                let mut name = String::new();
                while i < b.len() && b[i] != '.' && b[i] != '[' {
                    if b[i] == '\\' && i + 1 < b.len() {
                        i += 1;
                    }
                    name.push(b[i]);
                    i += 1;
                }
                if !name.is_empty() {
                    steps.push(Step::Field(name));
                }
            }
            '[' => {
                let end = b[i..].iter().position(|&c| c == ']')? + i;
                let inner: String = b[i + 1..end].iter().collect();
                let inner = inner.trim();
                if inner == "*" {
                    steps.push(Step::All);
                } else if let Some(f) = inner.strip_prefix("?(").and_then(|s| s.strip_suffix(')')) {
                    let (lhs, rhs) = f.split_once("==")?;
                    let lhs = lhs.trim().strip_prefix("@.")?.to_string();
                    let rhs = rhs
                        .trim()
                        .trim_matches(|c| c == '"' || c == '\'')
                        .to_string();
                    steps.push(Step::Filter(lhs, rhs));
                } else if let Ok(n) = inner.parse::<usize>() {
                    steps.push(Step::Index(n));
                } else {
                    steps.push(Step::Field(
                        inner.trim_matches(|c| c == '"' || c == '\'').to_string(),
                    ));
                }
                i = end + 1;
            }
            _ => return None,
        }
    }
    Some(steps)
}

/// All values the path selects in `obj`.
pub(crate) fn eval<'a>(path: &str, obj: &'a Value) -> Vec<&'a Value> {
    let Some(steps) = parse(path) else {
        return Vec::new();
    };
    let mut cur = vec![obj];
    for step in &steps {
        let mut next = Vec::new();
        for v in cur {
            match step {
                Step::Field(f) => {
                    if let Some(x) = v.get(f.as_str()) {
                        next.push(x);
                    }
                }
                Step::Index(n) => {
                    if let Some(x) = v.get(*n) {
                        next.push(x);
                    }
                }
                Step::All => match v {
                    Value::Array(a) => next.extend(a.iter()),
                    Value::Object(m) => next.extend(m.values()),
                    _ => {}
                },
                Step::Filter(field, want) => {
                    if let Value::Array(a) = v {
                        for x in a {
                            let got = eval(&format!(".{field}"), x);
                            if got.first().map(|g| scalar_text(g)) == Some(want.clone()) {
                                next.push(x);
                            }
                        }
                    }
                }
            }
        }
        cur = next;
    }
    cur
}

/// A value as kubectl prints it in a column: strings bare, others as JSON.
pub(crate) fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The selected values as text, comma-joined (None when the path selects nothing).
#[cfg(test)]
pub(crate) fn text(path: &str, obj: &Value) -> Option<String> {
    let vals = eval(path, obj);
    if vals.is_empty() {
        None
    } else {
        Some(
            vals.iter()
                .map(|v| scalar_text(v))
                .collect::<Vec<_>>()
                .join(","),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_select_like_kubectl() {
        let o = json!({"status": {"conditions": [{"type": "A", "status": "False"}, {"type": "Ready", "status": "True"}],
                       "n": 3}, "metadata": {"annotations": {"a.b/c": "x"}}, "l": [{"v": 1}, {"v": 2}]});
        assert_eq!(text(".status.n", &o).unwrap(), "3");
        assert_eq!(
            text(".status.conditions[?(@.type==\"Ready\")].status", &o).unwrap(),
            "True"
        );
        assert_eq!(text(".l[*].v", &o).unwrap(), "1,2");
        assert_eq!(text(".l[1].v", &o).unwrap(), "2");
        assert_eq!(text(".metadata.annotations.a\\.b/c", &o).unwrap(), "x");
        assert_eq!(text("{.metadata.annotations['a.b/c']}", &o).unwrap(), "x");
        assert!(text(".missing", &o).is_none());
        assert!(text("garbage[", &o).is_none());
    }
}
