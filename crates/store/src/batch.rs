//! Helpers for statements that carry many rows: a VALUES list of placeholders, and padding
//! of the rows to a power of two so that a handful of statement texts serve every batch size
//! (sqlx keeps 100 prepared statements per connection; a text per size would crowd them out).

use std::borrow::Cow;

/// `items` padded to the next power of two by repeating the last: for statements where a
/// repeated row matches the same row again and changes nothing.
pub(crate) fn padded<T>(items: &[T]) -> Vec<&T> {
    let mut out: Vec<&T> = items.iter().collect();
    if let Some(last) = items.last() {
        out.resize(items.len().next_power_of_two(), last);
    }
    out
}

/// `items` padded as by `padded`, each with its ordinal: 1, 2, … for the real rows and 0 for
/// the repeats, so that an insert can keep only `WHERE n > 0`.
pub(crate) fn numbered<T>(items: &[T]) -> Vec<(i64, &T)> {
    padded(items)
        .into_iter()
        .enumerate()
        .map(|(k, t)| (if k < items.len() { k as i64 + 1 } else { 0 }, t))
        .collect()
}

/// `n` placeholders for an `IN (...)` list, numbered from `$first`: "$first, $first+1, ...".
pub(crate) fn marks(first: usize, n: usize) -> String {
    let m: Vec<String> = (first..first + n).map(|k| format!("${k}")).collect();
    m.join(", ")
}

/// `n` rows of `width` placeholders for a VALUES list, numbered from `$first`, each cell
/// followed by its cast (PostgreSQL types a bare parameter in VALUES as text).
pub(crate) fn values_list(first: usize, n: usize, width: usize, casts: &[&str]) -> String {
    use std::fmt::Write;
    // Written into one string: a batch statement has hundreds of cells, and a string for
    // each cell and row was about a twentieth of the server's work in a burst of launches.
    let mut out = String::with_capacity(n * width * 8);
    for r in 0..n {
        out.push_str(if r == 0 { "(" } else { ", (" });
        for (c, cast) in casts.iter().enumerate().take(width) {
            let sep = if c == 0 { "" } else { ", " };
            let _ = write!(out, "{sep}${}{cast}", first + r * width + c);
        }
        out.push(')');
    }
    out
}

/// `items` in rounds where no key repeats, each round the indexes of its items in order;
/// None when no key repeats at all (one round of everything, the common case).
pub(crate) fn rounds<'a, T>(
    items: &'a [T],
    key: impl Fn(&'a T) -> &'a str,
) -> Option<Vec<Vec<usize>>> {
    let mut seen: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    let mut rounds: Vec<Vec<usize>> = Vec::new();
    for (k, it) in items.iter().enumerate() {
        let n = seen.entry(key(it)).or_insert(0);
        if rounds.len() <= *n {
            rounds.push(Vec::new());
        }
        rounds[*n].push(k);
        *n += 1;
    }
    (rounds.len() > 1).then_some(rounds)
}

/// The answers to `items`, written `rounds` (from `rounds`) one after another by `write`,
/// each answer in its item's place (`fill` until written).
pub(crate) async fn in_rounds<T, O, F, Fut>(
    items: &[T],
    rounds: Vec<Vec<usize>>,
    fill: O,
    mut write: F,
) -> Result<Vec<O>, lobster_core::Error>
where
    T: Clone,
    O: Clone,
    F: FnMut(Vec<T>) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<O>, lobster_core::Error>>,
{
    let mut answers = vec![fill; items.len()];
    for round in rounds {
        let some: Vec<T> = round.iter().map(|&k| items[k].clone()).collect();
        for (k, a) in round.into_iter().zip(write(some).await?) {
            answers[k] = a;
        }
    }
    Ok(answers)
}

/// The casts for a VALUES list: `pg` on PostgreSQL, none on SQLite (which has no `::`).
pub(crate) fn casts<'a>(backend: crate::Backend, pg: &[&'a str]) -> Vec<&'a str> {
    match backend {
        crate::Backend::Postgres => pg.to_vec(),
        crate::Backend::Sqlite => vec![""; pg.len()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_part_repeated_keys_and_keep_the_order() {
        let items = ["a", "b", "a", "c", "a", "b"];
        assert_eq!(
            rounds(&items, |s| s),
            Some(vec![vec![0, 1, 3], vec![2, 5], vec![4]])
        );
        assert_eq!(rounds(&["a", "b"], |s| s), None);
        assert_eq!(rounds::<&str>(&[], |s| s), None);
    }

    #[test]
    fn numbered_rows_mark_the_repeats_with_zero() {
        let rows = numbered(&["a", "b", "c"]);
        let got: Vec<(i64, &str)> = rows.into_iter().map(|(n, s)| (n, *s)).collect();
        assert_eq!(got, vec![(1, "a"), (2, "b"), (3, "c"), (0, "c")]);
        assert!(numbered::<i32>(&[]).is_empty());
    }

    #[test]
    fn values_lists_number_their_cells_row_by_row() {
        assert_eq!(
            values_list(3, 2, 2, &["", "::bigint"]),
            "($3, $4::bigint), ($5, $6::bigint)"
        );
    }
}

/// A value bound to a statement.
#[derive(Debug, Clone)]
pub(crate) enum Val<'a> {
    Text(Option<Cow<'a, str>>),
    Int(Option<i64>),
}

impl<'a> From<&'a str> for Val<'a> {
    fn from(s: &'a str) -> Self {
        Val::Text(Some(Cow::Borrowed(s)))
    }
}

impl<'a> From<&'a &'a str> for Val<'a> {
    fn from(s: &'a &'a str) -> Self {
        Val::Text(Some(Cow::Borrowed(s)))
    }
}

impl<'a> From<&'a String> for Val<'a> {
    fn from(s: &'a String) -> Self {
        Val::Text(Some(Cow::Borrowed(s)))
    }
}

impl From<String> for Val<'_> {
    fn from(s: String) -> Self {
        Val::Text(Some(Cow::Owned(s)))
    }
}

impl<'a> From<&'a Option<String>> for Val<'a> {
    fn from(s: &'a Option<String>) -> Self {
        Val::Text(s.as_deref().map(Cow::Borrowed))
    }
}

impl<'a> From<Option<&'a str>> for Val<'a> {
    fn from(s: Option<&'a str>) -> Self {
        Val::Text(s.map(Cow::Borrowed))
    }
}

impl From<i64> for Val<'_> {
    fn from(n: i64) -> Self {
        Val::Int(Some(n))
    }
}

impl From<Option<i64>> for Val<'_> {
    fn from(n: Option<i64>) -> Self {
        Val::Int(n)
    }
}

/// A statement of many values, as the backend binds it best. On SQLite every `$N` becomes a
/// plain `?` with its value bound in text order: SQLite finds a numbered parameter's name
/// by a walk along all of them, and sqlx asks that name of every parameter, so a statement
/// of 2,000 numbered parameters cost two million steps to bind (5 % of the server's time
/// while launching, all of it on the one writer thread).
pub(crate) struct Statement<'a> {
    sql: std::sync::Arc<str>,
    vals: Vec<Val<'a>>,
}

impl<'a> Statement<'a> {
    pub(crate) fn new(backend: crate::Backend, sql: &str, vals: Vec<Val<'a>>) -> Self {
        match backend {
            crate::Backend::Postgres => Statement {
                sql: sql.into(),
                vals,
            },
            crate::Backend::Sqlite => {
                let (sql, order) = positional(sql);
                let vals = order.into_iter().map(|n| vals[n - 1].clone()).collect();
                Statement {
                    sql: sql.into(),
                    vals,
                }
            }
        }
    }

    /// A PostgreSQL statement whose text is kept for reuse (not copied per statement).
    pub(crate) fn shared(sql: std::sync::Arc<str>, vals: Vec<Val<'a>>) -> Self {
        Statement { sql, vals }
    }

    pub(crate) fn sql(&self) -> &str {
        &self.sql
    }

    pub(crate) fn vals(&self) -> &[Val<'a>] {
        &self.vals
    }

    pub(crate) fn query(&self) -> sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments<'_>> {
        let mut q = sqlx::query(&self.sql);
        for v in &self.vals {
            q = match v {
                Val::Text(t) => q.bind(t.as_deref()),
                Val::Int(n) => q.bind(*n),
            };
        }
        q
    }
}

/// `sql` with each `$N` outside quoted text replaced by `?`, and the N of each, in text
/// order.
fn positional(sql: &str) -> (String, Vec<usize>) {
    let mut out = String::with_capacity(sql.len());
    let mut order = Vec::new();
    let mut chars = sql.char_indices().peekable();
    let mut quoted = false;
    while let Some((_, c)) = chars.next() {
        if c == '\'' {
            quoted = !quoted;
        }
        if c != '$' || quoted {
            out.push(c);
            continue;
        }
        let mut n = 0usize;
        let mut digits = 0;
        while let Some(&(_, d)) = chars.peek() {
            match d.to_digit(10) {
                Some(v) => {
                    n = n * 10 + v as usize;
                    digits += 1;
                    chars.next();
                }
                None => break,
            }
        }
        assert!(digits > 0, "a bare $ in a batch statement");
        out.push('?');
        order.push(n);
    }
    (out, order)
}

#[cfg(test)]
mod statement_tests {
    use super::*;

    #[test]
    fn sqlite_gets_plain_parameters_with_values_in_text_order() {
        let (sql, order) = positional("UPDATE t SET a = $3, b = $1 WHERE c = $12 AND d = $1");
        assert_eq!(sql, "UPDATE t SET a = ?, b = ? WHERE c = ? AND d = ?");
        assert_eq!(order, [3, 1, 12, 1]);
        let (sql, order) = positional("SELECT json_extract(p, '$.a') WHERE x = $1");
        assert_eq!(sql, "SELECT json_extract(p, '$.a') WHERE x = ?");
        assert_eq!(order, [1]);
        let vals = (1..=12).map(|k| Val::Int(Some(k))).collect();
        let st = Statement::new(crate::Backend::Sqlite, "SELECT $2, $1::x", vals);
        let got: Vec<Option<i64>> = st
            .vals
            .iter()
            .map(|v| match v {
                Val::Int(n) => *n,
                Val::Text(_) => None,
            })
            .collect();
        assert_eq!(got, [Some(2), Some(1)]);
    }
}
