//! Folding the per-CPU millisecond rings of the netburst BPF program into one
//! per-millisecond series, and noticing when slots were overwritten before
//! they were read.
//!
//! Reads nothing itself: it is handed each CPU's ring of one (interface,
//! direction) and the current millisecond.

use hostwatch_ebpf::maps::{NET_RING, NetRing};

const RING: u64 = NET_RING as u64;

/// What one folded millisecond holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    Counted {
        ms: u64,
        bytes: u64,
        packets: u64,
    },
    /// Milliseconds `from..from + count` were overwritten before userspace
    /// read them (it fell behind): unknown, never reported as zero traffic.
    Lost {
        from: u64,
        count: u64,
    },
}

/// One series' position: the first millisecond not folded yet.
#[derive(Debug, Default)]
pub struct Folder {
    next: Option<u64>,
}

impl Folder {
    /// Folds every complete millisecond before `now_ms` that was not folded
    /// yet. The first call only sets the starting point: what came before
    /// the agent looked is not history it can vouch for.
    pub fn fold(&mut self, rings: &[NetRing], now_ms: u64, mut emit: impl FnMut(Slot)) {
        let Some(mut ms) = self.next else {
            self.next = Some(now_ms);
            return;
        };
        // The ring holds the current millisecond and the RING - 1 before it.
        let oldest = now_ms.saturating_sub(RING - 1);
        if ms < oldest {
            emit(Slot::Lost {
                from: ms,
                count: oldest - ms,
            });
            ms = oldest;
        }
        while ms < now_ms {
            let slot = (ms % RING) as usize;
            let (mut bytes, mut packets, mut overwritten) = (0, 0, false);
            for ring in rings {
                match ring.ms[slot] {
                    stamp if stamp == ms => {
                        bytes += ring.bytes[slot];
                        packets += u64::from(ring.packets[slot]);
                    }
                    stamp if stamp > ms => overwritten = true,
                    // Older stamp: that CPU sent nothing in this millisecond.
                    _ => {}
                }
            }
            emit(if overwritten {
                Slot::Lost { from: ms, count: 1 }
            } else {
                Slot::Counted { ms, bytes, packets }
            });
            ms += 1;
        }
        self.next = Some(ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring() -> NetRing {
        NetRing {
            ms: [0; NET_RING],
            bytes: [0; NET_RING],
            packets: [0; NET_RING],
        }
    }

    fn put(ring: &mut NetRing, ms: u64, bytes: u64, packets: u32) {
        let slot = (ms % RING) as usize;
        ring.ms[slot] = ms;
        ring.bytes[slot] = bytes;
        ring.packets[slot] = packets;
    }

    fn fold(folder: &mut Folder, rings: &[NetRing], now: u64) -> Vec<Slot> {
        let mut out = Vec::new();
        folder.fold(rings, now, |slot| out.push(slot));
        out
    }

    #[test]
    fn sums_cpus_per_millisecond_and_skips_the_current_one() {
        let (mut a, mut b) = (ring(), ring());
        put(&mut a, 1001, 1500, 1);
        put(&mut b, 1001, 3000, 2);
        put(&mut b, 1002, 100, 1);
        put(&mut a, 1003, 999, 9); // the current millisecond: not complete yet
        let mut folder = Folder::default();
        assert_eq!(fold(&mut folder, &[a, b], 1001), vec![]);
        assert_eq!(
            fold(&mut folder, &[a, b], 1003),
            vec![
                Slot::Counted {
                    ms: 1001,
                    bytes: 4500,
                    packets: 3
                },
                Slot::Counted {
                    ms: 1002,
                    bytes: 100,
                    packets: 1
                }
            ]
        );
        assert_eq!(
            fold(&mut folder, &[a, b], 1004),
            vec![Slot::Counted {
                ms: 1003,
                bytes: 999,
                packets: 9
            }]
        );
    }

    #[test]
    fn stale_stamps_are_silence() {
        let mut a = ring();
        put(&mut a, 1000 - RING, 7777, 7); // the same slot, one lap earlier
        let mut folder = Folder::default();
        fold(&mut folder, &[a], 1000);
        assert_eq!(
            fold(&mut folder, &[a], 1001),
            vec![Slot::Counted {
                ms: 1000,
                bytes: 0,
                packets: 0
            }]
        );
    }

    #[test]
    fn falling_behind_counts_lost_milliseconds() {
        let mut a = ring();
        let mut folder = Folder::default();
        fold(&mut folder, &[a], 1000);
        // Stopped for 2 s: only the last RING - 1 complete milliseconds remain.
        let now = 3000;
        put(&mut a, now - 10, 64, 1);
        let slots = fold(&mut folder, &[a], now);
        assert_eq!(
            slots[0],
            Slot::Lost {
                from: 1000,
                count: now - (RING - 1) - 1000
            }
        );
        assert_eq!(slots.len(), 1 + (RING as usize - 1));
        assert!(slots.contains(&Slot::Counted {
            ms: now - 10,
            bytes: 64,
            packets: 1
        }));
    }

    #[test]
    fn a_slot_overwritten_during_the_read_is_lost_not_zero() {
        let mut a = ring();
        let mut folder = Folder::default();
        fold(&mut folder, &[a], 2000);
        put(&mut a, 2000 + RING, 5, 1); // a later lap landed in 2000's slot
        assert_eq!(fold(&mut folder, &[a], 2001), vec![Slot::Lost { from: 2000, count: 1 }]);
    }
}
