//! A checker of the power-cut promise over 4 KiB units of a volume, shared by the
//! scenario tests: each write of a unit gets a fresh generation whose bytes name the unit
//! and the generation in every 512-byte sector; after an import the volume is read back
//! and each unit must hold what the writes and flushes before the cut allow.
//!
//! Owns: per unit, what the last import showed (the floor) and the writes since, in the
//! order they were issued (each unit is written by one writer at a time).
//! Invariants checked, per unit:
//! - a write covered by a flush that returned Ok reads back, or a later write does;
//! - without such a write, the floor or any later write (old or new);
//! - the bytes are exactly one write's (never torn within 4 KiB, never foreign);
//! - what one import showed is the floor of the next check (nothing goes back).
//!
//! Never: guesses a generation; a unit that is neither is reported with what each of its
//! 512-byte sectors holds.

/// Bytes per unit.
pub const UNIT: usize = 4096;
const MAGIC: u64 = 0x7063_7574_756e_6974;

/// The bytes of generation `gen` (>= 1) of unit `unit`: every 512-byte sector names both,
/// the rest is incompressible filler derived from them. Generation 0 is all zeros (never
/// written).
pub fn unit_bytes(unit: u64, gen: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(UNIT);
    for s in 0..8u64 {
        let mut x = (unit << 24) ^ (gen << 3) ^ s;
        for w in 0..64u64 {
            let word = match w {
                0 => MAGIC,
                1 => unit,
                2 => gen,
                3 => s,
                _ => {
                    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
                    crate::model::splitmix(x)
                }
            };
            b.extend_from_slice(&word.to_le_bytes());
        }
    }
    b
}

/// Which generation unit `unit` read back is (0: all zeros), or None if its bytes are
/// not exactly one write's.
pub fn unit_gen(unit: u64, b: &[u8]) -> Option<u64> {
    if b.iter().all(|&x| x == 0) {
        return Some(0);
    }
    let gen = u64::from_le_bytes(b.get(16..24)?.try_into().ok()?);
    (b == unit_bytes(unit, gen).as_slice()).then_some(gen)
}

/// Per 512-byte sector of a unit read back: the generation it came from (None: zeros or
/// foreign bytes), to describe a torn unit.
pub fn sector_gens(unit: u64, b: &[u8]) -> Vec<Option<u64>> {
    b.chunks(512)
        .enumerate()
        .map(|(s, c)| {
            let gen = u64::from_le_bytes(c.get(16..24)?.try_into().ok()?);
            let want = unit_bytes(unit, gen);
            (want.get(s * 512..(s + 1) * 512) == Some(c)).then_some(gen)
        })
        .collect()
}

/// What covers a write, once its round is over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cover {
    /// No flush that returned Ok started after the write returned.
    None,
    /// A flush that returned Ok only after the power went off. A correct store cannot do
    /// that unless its own I/O finished before the cut, so the write must be there too;
    /// reported apart because no real host sees an ack after its power died (the same
    /// path acknowledges data lost to a failed device flush).
    Late,
    /// A flush that returned Ok before the cut began.
    Before,
}

/// What the last import showed of a unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Floor {
    /// A whole write of this generation (0: never written).
    Gen(u64),
    /// Torn bytes (already reported), by a hash of them.
    Torn(u64),
}

#[derive(Clone, Debug)]
struct Unit {
    floor: Floor,
    since: Vec<(u64, Cover)>,
}

/// A broken promise found by [`Units::check`].
#[derive(Debug, Clone)]
pub struct Violation {
    /// What kind of promise.
    pub kind: &'static str,
    /// Where, with the unit's history.
    pub detail: String,
}

/// The model of a volume's units.
#[derive(Debug, Clone)]
pub struct Units {
    units: Vec<Unit>,
    next_gen: Vec<u64>,
}

impl Units {
    /// `n` units, all never written.
    pub fn new(n: usize) -> Units {
        Units {
            units: vec![
                Unit {
                    floor: Floor::Gen(0),
                    since: Vec::new(),
                };
                n
            ],
            next_gen: vec![1; n],
        }
    }

    /// Number of units.
    pub fn len(&self) -> usize {
        self.units.len()
    }

    /// True with no units.
    pub fn is_empty(&self) -> bool {
        self.units.is_empty()
    }

    /// The next generation of every unit, to hand disjoint parts to writer threads
    /// (`chunks_mut`): take `g[u]` and increment it for each new write of unit `u`, so a
    /// generation is never reused, not even after a lost write.
    pub fn next_gens_mut(&mut self) -> &mut [u64] {
        &mut self.next_gen
    }

    /// Record a write of `unit` with generation `gen`, in the order writes of that unit
    /// were issued, with what covers it.
    pub fn record(&mut self, unit: usize, gen: u64, cover: Cover) {
        if let Some(u) = self.units.get_mut(unit) {
            u.since.push((gen, cover));
        }
    }

    /// Check the volume image `got` (all units) after an import; violations go to `out`
    /// with `ctx`. What `got` shows becomes the floor either way, so a loss is reported
    /// once. Returns the number of units that had a flushed write to check.
    pub fn check(&mut self, got: &[u8], ctx: &str, out: &mut Vec<Violation>) -> u64 {
        let mut flushed = 0;
        for (u, m) in self.units.iter_mut().enumerate() {
            let Some(b) = got.get(u * UNIT..(u + 1) * UNIT) else {
                out.push(Violation {
                    kind: "short read",
                    detail: format!("{ctx}: unit {u} not read back"),
                });
                continue;
            };
            let seen = match unit_gen(u as u64, b) {
                Some(g) => Floor::Gen(g),
                None => Floor::Torn(hash(b)),
            };
            let strict = m.since.iter().rposition(|w| w.1 == Cover::Before);
            let late = m.since.iter().rposition(|w| w.1 != Cover::None);
            let allowed = |from: Option<usize>| -> Vec<Floor> {
                match from {
                    Some(i) => m.since[i..].iter().map(|w| Floor::Gen(w.0)).collect(),
                    None => std::iter::once(m.floor)
                        .chain(m.since.iter().map(|w| Floor::Gen(w.0)))
                        .collect(),
                }
            };
            flushed += u64::from(strict.is_some());
            let history = || format!("floor {:?}, writes since {:?}", m.floor, m.since);
            let kind = if let Floor::Torn(_) = seen {
                (!allowed(late).contains(&seen)).then(|| {
                    (
                        "torn or foreign bytes in a 4 KiB unit",
                        format!("sectors from gens {:?}", sector_gens(u as u64, b)),
                    )
                })
            } else if !allowed(strict).contains(&seen) {
                Some((
                    if strict.is_some() {
                        "lost: a write flushed before the cut"
                    } else {
                        "went back: older than the last import showed"
                    },
                    format!("read {seen:?}"),
                ))
            } else if !allowed(late).contains(&seen) {
                Some((
                    "lost: a write whose flush was acknowledged after the cut",
                    format!("read {seen:?}"),
                ))
            } else {
                None
            };
            if let Some((kind, what)) = kind {
                out.push(Violation {
                    kind,
                    detail: format!("{ctx}: unit {u}: {what}; {}", history()),
                });
            }
            m.floor = seen;
            m.since.clear();
        }
        flushed
    }
}

/// A summary of `violations` by kind (a few examples each), or None if there are none.
pub fn report(violations: &[Violation]) -> Option<String> {
    if violations.is_empty() {
        return None;
    }
    let mut kinds: Vec<&'static str> = violations.iter().map(|v| v.kind).collect();
    kinds.sort_unstable();
    kinds.dedup();
    let mut msg = format!("{} violations:", violations.len());
    for k in kinds {
        let of: Vec<&Violation> = violations.iter().filter(|v| v.kind == k).collect();
        msg += &format!("\n- {k}: {} units, e.g.", of.len());
        for v in of.iter().take(4) {
            msg += &format!("\n    {}", v.detail);
        }
    }
    Some(msg)
}

fn hash(b: &[u8]) -> u64 {
    b.chunks(8).fold(0x243F_6A88_85A3_08D3, |h, c| {
        let mut w = [0u8; 8];
        w[..c.len()].copy_from_slice(c);
        crate::model::splitmix(h ^ u64::from_le_bytes(w))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checker_tells_lost_torn_and_late_apart() {
        let mut m = Units::new(4);
        let g = |u: u64, gen: u64| unit_bytes(u, gen);
        m.record(0, 1, Cover::Before);
        m.record(1, 1, Cover::None);
        m.record(2, 1, Cover::Late);
        m.record(3, 1, Cover::Before);
        m.record(3, 2, Cover::None);
        let mut img = Vec::new();
        img.extend(vec![0u8; UNIT]); // unit 0: flushed write lost
        img.extend(vec![0u8; UNIT]); // unit 1: unflushed, old: fine
        img.extend(vec![0u8; UNIT]); // unit 2: late-acked write lost
        let mut torn = g(3, 2);
        torn[3584..].copy_from_slice(&g(3, 1)[3584..]);
        img.extend(torn); // unit 3: torn
        let mut out = Vec::new();
        m.check(&img, "t", &mut out);
        let kinds: Vec<&str> = out.iter().map(|v| v.kind).collect();
        assert_eq!(out.len(), 3, "{out:?}");
        assert!(kinds.contains(&"lost: a write flushed before the cut"));
        assert!(kinds.contains(&"lost: a write whose flush was acknowledged after the cut"));
        assert!(kinds.contains(&"torn or foreign bytes in a 4 KiB unit"));
        // The floor moved: the same image again is fine, going back is not.
        let mut out = Vec::new();
        m.check(&img, "t", &mut out);
        assert!(out.is_empty(), "{out:?}");
        let mut img2 = img.clone();
        img2[3 * UNIT..].copy_from_slice(&g(3, 1));
        m.check(&img2, "t", &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].kind, "went back: older than the last import showed");
        assert_eq!(unit_gen(5, &g(5, 9)), Some(9));
        assert!(report(&out).is_some());
    }
}
