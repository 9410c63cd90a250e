//! The KV cache of a [`Context`] (llama.cpp's "memory"): clearing it, and
//! removing, copying, keeping and shifting the positions of sequences. Every
//! sequence id and position is checked before it reaches llama.cpp, whose
//! KV cache asserts on what it does not expect.

use super::Context;
use crate::batch::{Pos, SeqId, MAX_POS};
use crate::error::{Error, Result};
use llama_sys as sys;
use std::ops::{Bound, RangeBounds};

/// The KV cache's operations.
impl Context<'_> {
    fn memory(&self) -> sys::llama_memory_t {
        // SAFETY: live context.
        unsafe { sys::llama_get_memory(self.as_ptr()) }
    }

    /// Whether this context's memory can shift positions ([`seq_add`](Self::seq_add),
    /// [`seq_div`](Self::seq_div), the engine's context shift).
    pub fn can_shift(&self) -> bool {
        // SAFETY: live memory handle; a plain query.
        unsafe { sys::llama_memory_can_shift(self.memory()) }
    }

    fn check_shift(&self, op: &'static str) -> Result<()> {
        if self.can_shift() {
            Ok(())
        } else {
            Err(Error::Memory { op, reason: "this model's memory cannot shift positions".into() })
        }
    }

    /// Empties the KV cache; `data` also zeroes the buffers.
    pub fn clear_kv(&mut self, data: bool) {
        // SAFETY: live memory handle.
        unsafe { sys::llama_memory_clear(self.memory(), data) };
        self.outputs.clear();
    }

    /// Removes positions `range` of sequence `seq` (`None`: every sequence).
    /// Returns false if the memory could not remove a partial range
    /// (recurrent models).
    pub fn seq_rm(&mut self, seq: Option<SeqId>, range: impl RangeBounds<Pos>) -> Result<bool> {
        if let Some(s) = seq {
            self.check_seq(s)?;
        }
        let (p0, p1) = pos_range(range)?;
        // SAFETY: sequence id checked (or -1 = all), positions >= 0 or -1.
        Ok(unsafe { sys::llama_memory_seq_rm(self.memory(), seq.unwrap_or(-1), p0, p1) })
    }

    /// Copies positions `range` of sequence `src` to sequence `dst`. With a
    /// unified cache ([`ContextParams::kv_unified`](super::ContextParams::kv_unified)) the cells are shared, not
    /// copied, and any range works. Otherwise each sequence of a context of
    /// several has its own KV stream, and llama.cpp copies between streams only
    /// whole sequences: there the range must be `..` (or start at 0 and be
    /// unbounded), else [`Error::Memory`].
    pub fn seq_cp(&mut self, src: SeqId, dst: SeqId, range: impl RangeBounds<Pos>) -> Result<()> {
        self.check_seq(src)?;
        self.check_seq(dst)?;
        let (p0, p1) = pos_range(range)?;
        // Without kv_unified each sequence has its own KV stream, and
        // llama.cpp copies across streams only whole buffers: a partial range
        // aborts (`llama-kv-cache.cpp:524`). A unified cache shares cells.
        if src != dst && self.n_seq_max > 1 && !self.kv_unified && (p0 > 0 || p1 >= 0) {
            return Err(Error::Memory {
                op: "seq_cp",
                reason: format!(
                    "sequences {src} and {dst} have separate KV streams: only whole sequences can be copied (use \
                     `..`), not positions {p0}..{p1}"
                ),
            });
        }
        // SAFETY: both ids checked, positions valid; a copy across streams
        // covers the whole range (checked above).
        unsafe { sys::llama_memory_seq_cp(self.memory(), src, dst, p0, p1) };
        Ok(())
    }

    /// The sequence ids an operation on `seq` covers (`None`: all of them).
    fn seq_ids(&self, seq: Option<SeqId>) -> std::ops::Range<SeqId> {
        match seq {
            Some(s) => s..s + 1,
            None => 0..self.n_seq_max as SeqId,
        }
    }

    /// Removes every sequence but `seq`, whatever the KV layout (llama.cpp's
    /// own `seq_keep` only touches the cache stream that holds `seq` when
    /// each sequence has its own stream).
    pub fn seq_keep(&mut self, seq: SeqId) -> Result<()> {
        self.check_seq(seq)?;
        let mem = self.memory();
        // SAFETY: id checked.
        unsafe { sys::llama_memory_seq_keep(mem, seq) };
        for other in (0..self.n_seq_max as SeqId).filter(|&s| s != seq) {
            // SAFETY: `other` is in 0..n_seq_max; whole range.
            unsafe { sys::llama_memory_seq_rm(mem, other, -1, -1) };
        }
        Ok(())
    }

    /// Adds `delta` to the positions `range` of sequence `seq` (`None`: all).
    /// Cells whose position becomes negative are removed (llama.cpp's rule);
    /// a shift that would take a position above [`MAX_POS`] is refused.
    pub fn seq_add(&mut self, seq: Option<SeqId>, range: impl RangeBounds<Pos>, delta: Pos) -> Result<()> {
        if let Some(s) = seq {
            self.check_seq(s)?;
        }
        self.check_shift("seq_add")?;
        let (p0, p1) = pos_range(range)?;
        if !(-MAX_POS..=MAX_POS).contains(&delta) {
            return Err(Error::invalid("position delta", delta, format!("must be in -{MAX_POS}..={MAX_POS}")));
        }
        if delta > 0 {
            for s in self.seq_ids(seq) {
                // SAFETY: `s` in 0..n_seq_max.
                let max = unsafe { sys::llama_memory_seq_pos_max(self.memory(), s) };
                if max >= 0 && max + delta > MAX_POS {
                    return Err(Error::invalid(
                        "position delta",
                        delta,
                        format!("sequence {s} holds position {max}: the result must stay <= {MAX_POS} (MAX_POS)"),
                    ));
                }
            }
        }
        // llama.cpp's KV cache asserts on seq_id -1 here (`llama-kv-cache.cpp:594`,
        // unlike seq_rm): `None` is every sequence, one call each.
        for s in self.seq_ids(seq) {
            // SAFETY: `s` in 0..n_seq_max, positions valid, the memory can shift.
            unsafe { sys::llama_memory_seq_add(self.memory(), s, p0, p1, delta) };
        }
        Ok(())
    }

    /// Divides the positions `range` of sequence `seq` (`None`: all) by `d` (>= 1).
    pub fn seq_div(&mut self, seq: Option<SeqId>, range: impl RangeBounds<Pos>, d: i32) -> Result<()> {
        if let Some(s) = seq {
            self.check_seq(s)?;
        }
        if d < 1 {
            return Err(Error::invalid("divisor", d, "must be >= 1"));
        }
        self.check_shift("seq_div")?;
        let (p0, p1) = pos_range(range)?;
        // As for seq_add: no -1 here (`llama-kv-cache.cpp:644`).
        for s in self.seq_ids(seq) {
            // SAFETY: `s` in 0..n_seq_max, d >= 1, the memory can shift.
            unsafe { sys::llama_memory_seq_div(self.memory(), s, p0, p1, d) };
        }
        Ok(())
    }

    /// Smallest position of sequence `seq` in the cache, `None` if empty.
    pub fn seq_pos_min(&self, seq: SeqId) -> Result<Option<Pos>> {
        self.check_seq(seq)?;
        // SAFETY: id checked.
        let p = unsafe { sys::llama_memory_seq_pos_min(self.memory(), seq) };
        Ok((p >= 0).then_some(p))
    }

    /// Largest position of sequence `seq` in the cache, `None` if empty.
    pub fn seq_pos_max(&self, seq: SeqId) -> Result<Option<Pos>> {
        self.check_seq(seq)?;
        // SAFETY: id checked.
        let p = unsafe { sys::llama_memory_seq_pos_max(self.memory(), seq) };
        Ok((p >= 0).then_some(p))
    }
}

/// A position range as llama.cpp takes it: `-1` for an open end.
fn pos_range(r: impl RangeBounds<Pos>) -> Result<(Pos, Pos)> {
    let p0 = match r.start_bound() {
        Bound::Unbounded => -1,
        Bound::Included(&p) => p,
        Bound::Excluded(&p) => p.saturating_add(1),
    };
    let p1 = match r.end_bound() {
        Bound::Unbounded => -1,
        Bound::Excluded(&p) => p,
        Bound::Included(&p) => p.saturating_add(1),
    };
    let bad = |p: Pos, b: Bound<&Pos>| !matches!(b, Bound::Unbounded) && !(0..=MAX_POS + 1).contains(&p);
    if bad(p0, r.start_bound()) || bad(p1, r.end_bound()) {
        return Err(Error::invalid(
            "position range",
            format!("{p0}..{p1}"),
            format!("positions are in 0..={MAX_POS} (MAX_POS)"),
        ));
    }
    Ok((p0, p1))
}
