//! Helpers for statements that carry many rows: a VALUES list of placeholders, and padding
//! of the rows to a power of two so that a handful of statement texts serve every batch size
//! (sqlx keeps 100 prepared statements per connection; a text per size would crowd them out).

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

/// `n` rows of `width` placeholders for a VALUES list, numbered from `$first`, each cell
/// followed by its cast (PostgreSQL types a bare parameter in VALUES as text).
pub(crate) fn values_list(first: usize, n: usize, width: usize, casts: &[&str]) -> String {
    (0..n)
        .map(|r| {
            let cells: Vec<String> = (0..width)
                .map(|c| format!("${}{}", first + r * width + c, casts[c]))
                .collect();
            format!("({})", cells.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
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
