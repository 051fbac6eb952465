//! SRV target order (RFC 2782 "Usage rules"), no I/O: by priority, then weighted random within
//! a priority. The random source is passed in; [`crate::edge::dns`] does the lookups.

/// One SRV answer (RFC 2782).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvTarget {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    pub target: String,
}

/// Orders SRV targets for trying in turn (RFC 2782 "Usage rules"): lowest priority first;
/// within one priority, repeatedly pick at random with probability proportional to weight
/// (zero-weight records first in the running sum, so they are rarely chosen while others
/// exist). `random(n)` must return a uniform integer in `0..=n`. A target of `.` means "no
/// service" and is dropped.
pub fn order_srv(
    mut records: Vec<SrvTarget>,
    mut random: impl FnMut(u32) -> u32,
) -> Vec<SrvTarget> {
    records.retain(|r| r.target != "." && !r.target.is_empty());
    records.sort_by_key(|r| (r.priority, r.weight != 0));
    let mut out = Vec::with_capacity(records.len());
    while !records.is_empty() {
        let priority = records[0].priority;
        let mut group: Vec<SrvTarget> = Vec::new();
        while records.first().is_some_and(|r| r.priority == priority) {
            group.push(records.remove(0));
        }
        while !group.is_empty() {
            let total: u32 = group.iter().map(|r| u32::from(r.weight)).sum();
            let pick = random(total).min(total);
            let mut sum = 0;
            let index = group
                .iter()
                .position(|r| {
                    sum += u32::from(r.weight);
                    sum >= pick
                })
                .unwrap_or(0);
            out.push(group.remove(index));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn srv(priority: u16, weight: u16, target: &str) -> SrvTarget {
        SrvTarget {
            priority,
            weight,
            port: 5061,
            target: target.into(),
        }
    }

    #[test]
    fn srv_order_by_priority_then_weight() {
        let records = vec![
            srv(20, 0, "backup.contoso.com"),
            srv(10, 60, "a.contoso.com"),
            srv(10, 40, "b.contoso.com"),
            srv(5, 0, "."),
        ];
        // random always returns the top of the range: the last record of the running sum wins.
        let hi: Vec<String> = order_srv(records.clone(), |n| n)
            .into_iter()
            .map(|r| r.target)
            .collect();
        assert_eq!(hi, ["b.contoso.com", "a.contoso.com", "backup.contoso.com"]);
        // random returns 1: the first record with a running sum ≥ 1.
        let lo: Vec<String> = order_srv(records, |n| n.min(1))
            .into_iter()
            .map(|r| r.target)
            .collect();
        assert_eq!(lo, ["a.contoso.com", "b.contoso.com", "backup.contoso.com"]);
        // Weighted choice is proportional: over all draws 0..=100, a (60) wins 60 times.
        let mut a_first = 0;
        for draw in 0..=100u32 {
            let first = order_srv(vec![srv(10, 60, "a"), srv(10, 40, "b")], |n| draw.min(n));
            if first[0].target == "a" {
                a_first += 1;
            }
        }
        assert_eq!(a_first, 61); // draws 0..=60 (0 picks the first record too)
    }
}
