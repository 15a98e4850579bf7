//! Collecting fallible items into vectors of exactly their number. `collect::<Result<Vec<_>,
//! _>>()` cannot know the count in advance (its iterator may stop at an error) and starts at a
//! capacity of 4: for the one-rule, one-match, one-header vectors most routes have, that is
//! four times the memory, per route (10,000 routes: megabytes).

/// The items, or the first error.
pub fn exact<T, E>(items: impl ExactSizeIterator<Item = Result<T, E>>) -> Result<Vec<T>, E> {
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        out.push(item?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_item_takes_room_for_one() {
        let one = exact([Ok::<_, ()>(7u64)].into_iter()).unwrap();
        assert_eq!((one.len(), one.capacity()), (1, 1));
        let collected: Vec<u64> = [Ok::<_, ()>(7u64)]
            .into_iter()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(collected.capacity() > 1, "what this module is for");
        assert_eq!(exact([Ok(1), Err("no"), Ok(3)].into_iter()), Err("no"));
    }
}
