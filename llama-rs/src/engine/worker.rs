//! The engine's thread: slots, the step loop, sampling and events.

use super::request::{Event, Finished, Logprobs, RequestStats, Shared, StreamPiece};
use super::{Command, EngineStatus};
use crate::adapter::LoraAdapter;
use crate::batch::{Batch, Pos, SeqId};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::generate::{Assembled, StopReason, TextAssembler};
use crate::sampler::Sampler;
use crate::state::SeqState;
use crate::vocab::{RenderSpecial, Token};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A checked request waiting for a slot.
pub(crate) struct Pending {
    pub(crate) shared: Arc<Shared>,
    /// The whole prompt: a resumed state's tokens, then the new ones.
    pub(crate) tokens: Vec<Token>,
    pub(crate) resume: Option<SeqState>,
    pub(crate) sampler: Sampler<'static>,
    pub(crate) max_tokens: usize,
    pub(crate) stop_strings: Vec<String>,
    pub(crate) stop_tokens: Vec<Token>,
    pub(crate) ignore_eos: bool,
    pub(crate) logprobs: Option<usize>,
    pub(crate) context_shift: Option<usize>,
    pub(crate) save_state: bool,
    pub(crate) special: RenderSpecial,
    pub(crate) submitted: Instant,
    /// The LoRA adapters and scales, in a canonical order (see [`AdapterSet`]).
    pub(crate) lora: AdapterSet,
}

/// A set of LoRA adapters with their scales, sorted by adapter identity, so
/// that two equal sets compare equal element by element.
pub(crate) type AdapterSet = Vec<(LoraAdapter<'static>, f32)>;

/// Sorts a set into its canonical order.
pub(crate) fn canonical(mut set: AdapterSet) -> AdapterSet {
    set.sort_by_key(|(a, _)| a.as_ptr() as usize);
    set
}

/// Whether two canonical sets are the same adapters with the same scales.
fn same_set(a: &AdapterSet, b: &AdapterSet) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|((x, s), (y, t))| x.same(y) && s.to_bits() == t.to_bits())
}

/// A request in a slot.
struct Active {
    p: Box<Pending>,
    /// Arrival order: prompt chunks are served first come, first served.
    order: u64,
    admitted: Instant,
    cached: usize,
    /// Sampled, emitted, not yet decoded.
    next: Option<Token>,
    text: TextAssembler,
    generated: usize,
    first_token: Option<Instant>,
    last_token: Option<Instant>,
    shifts: usize,
    /// The engine step that last decoded for it (0: none yet): requests of
    /// another adapter set take turns by it.
    last_step: u64,
    /// Waits for an earlier request seated with the same prompt start to
    /// decode it: (its slot, its id, the tokens to share).
    follow: Option<(usize, u64, usize)>,
}

/// One sequence of the context.
struct Slot {
    seq: SeqId,
    /// The tokens whose KV cells this sequence holds, positions `0..len`.
    cache: Vec<Token>,
    last_used: u64,
    active: Option<Box<Active>>,
    /// The adapter set the cached cells were computed with: a prefix is
    /// reused only by a request with the same set.
    cache_lora: AdapterSet,
}

/// What one slot put into the current step's batch.
#[derive(Clone, Copy)]
struct Entry {
    slot: usize,
    n_before: usize,
    n_added: usize,
    row: Option<i32>,
}

pub(crate) struct Worker {
    ctx: Context<'static>,
    rx: mpsc::Receiver<Command>,
    slots: Vec<Slot>,
    queue: VecDeque<Box<Pending>>,
    batch: Batch,
    entries: Vec<Entry>,
    order: Vec<usize>,
    cancels: Arc<AtomicU64>,
    armed: Arc<AtomicU64>,
    status: Arc<Mutex<EngineStatus>>,
    n_ctx: usize,
    n_ctx_slot: usize,
    step_tokens: usize,
    tick: u64,
    steps: u64,
    decoded: u64,
    finished: u64,
    shutdown: bool,
}

/// Whether request `a` uses the adapter set of slot `group`'s request.
fn in_group(slots: &[Slot], a: &Active, group: usize) -> bool {
    slots[group].active.as_ref().is_some_and(|g| same_set(&g.p.lora, &a.p.lora))
}

impl Slot {
    /// How many of `tokens` this slot's cache can give a request with
    /// adapters `lora`: none when they were computed with another set.
    fn reusable(&self, tokens: &[Token], lora: &AdapterSet) -> usize {
        if same_set(&self.cache_lora, lora) {
            lcp(&self.cache, tokens)
        } else {
            0
        }
    }
}

fn lcp(a: &[Token], b: &[Token]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// A copy of an error for each of several requests (Error is not Clone).
fn copy_error(e: &Error) -> Error {
    match e {
        Error::ContextFull { n_ctx, message } => Error::ContextFull { n_ctx: *n_ctx, message: message.clone() },
        Error::Aborted => Error::Aborted,
        other => Error::Decode { code: -1, message: other.to_string() },
    }
}

impl Worker {
    pub(crate) fn new(
        mut ctx: Context<'static>,
        rx: mpsc::Receiver<Command>,
        cancels: Arc<AtomicU64>,
        status: Arc<Mutex<EngineStatus>>,
        n_ctx_slot: usize,
        step_tokens: usize,
    ) -> Result<Worker> {
        let n_slots = ctx.n_seq_max() as usize;
        let armed = Arc::new(AtomicU64::new(0));
        let (c, a) = (cancels.clone(), armed.clone());
        // Stops a decode as soon as any request is cancelled; the step is
        // then decoded again without it.
        ctx.set_abort_callback(Some(Box::new(move || c.load(Ordering::Acquire) != a.load(Ordering::Acquire))));
        let batch = Batch::new(ctx.n_batch() as usize, 1)?;
        let slots = (0..n_slots)
            .map(|i| Slot {
                seq: i as SeqId,
                cache: Vec::with_capacity(n_ctx_slot),
                last_used: 0,
                active: None,
                cache_lora: Vec::new(),
            })
            .collect();
        Ok(Worker {
            n_ctx: ctx.n_ctx() as usize,
            ctx,
            rx,
            slots,
            queue: VecDeque::new(),
            batch,
            entries: Vec::with_capacity(n_slots),
            order: Vec::with_capacity(n_slots),
            cancels,
            armed,
            status,
            n_ctx_slot,
            step_tokens,
            tick: 0,
            steps: 0,
            decoded: 0,
            finished: 0,
            shutdown: false,
        })
    }

    pub(crate) fn run(mut self) {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.serve()));
        let message = match result {
            Ok(()) => None,
            Err(p) => Some(crate::ffi::panic_message(&*p)),
        };
        // Whatever is left ends here.
        let fail = |shared: &Shared| {
            let e = match &message {
                Some(m) => Error::CallbackPanic { message: format!("the engine's thread panicked: {m}") },
                None => Error::Aborted,
            };
            shared.send(Event::Failed(e), true);
        };
        for slot in &mut self.slots {
            if let Some(a) = slot.active.take() {
                fail(&a.p.shared);
            }
        }
        for p in self.queue.drain(..) {
            fail(&p.shared);
        }
        while let Ok(cmd) = self.rx.try_recv() {
            if let Command::Submit(list) = cmd {
                list.iter().for_each(|p| fail(&p.shared));
            }
        }
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Submit(p) => self.queue.extend(p.into_iter().map(Box::new)),
            Command::Wake => {}
            Command::Shutdown => self.shutdown = true,
        }
    }

    fn idle(&self) -> bool {
        self.queue.is_empty() && self.slots.iter().all(|s| s.active.is_none())
    }

    fn serve(&mut self) {
        loop {
            if self.idle() {
                self.publish();
                match self.rx.recv() {
                    Ok(cmd) => self.handle(cmd),
                    Err(_) => return,
                }
            }
            while let Ok(cmd) = self.rx.try_recv() {
                self.handle(cmd);
            }
            if self.shutdown {
                return;
            }
            self.drop_cancelled();
            self.admit();
            self.step();
        }
    }

    fn publish(&self) {
        let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
        s.active = self.slots.iter().filter(|s| s.active.is_some()).count();
        s.queued = self.queue.len();
        s.idle_cached_tokens = self.slots.iter().filter(|s| s.active.is_none()).map(|s| s.cache.len()).sum();
        s.steps = self.steps;
        s.decoded_tokens = self.decoded;
        s.finished = self.finished;
    }

    /// Ends cancelled requests, queued or in a slot; a slot keeps its cache.
    /// The status is published before the requests hear of it, so that a
    /// caller who saw the end also sees the slot free.
    fn drop_cancelled(&mut self) {
        let mut ended: Vec<Arc<Shared>> = Vec::new();
        self.queue.retain(|p| {
            let c = p.shared.is_cancelled();
            if c {
                ended.push(p.shared.clone());
            }
            !c
        });
        for slot in &mut self.slots {
            if slot.active.as_ref().is_some_and(|a| a.p.shared.is_cancelled()) {
                let a = slot.active.take().expect("checked");
                ended.push(a.p.shared.clone());
                self.tick += 1;
                slot.last_used = self.tick;
            }
        }
        if ended.is_empty() {
            return;
        }
        self.finished += ended.len() as u64;
        self.publish();
        for shared in ended {
            shared.send(Event::Failed(Error::Aborted), true);
        }
    }

    /// Puts queued requests into free slots, reusing cached prefixes.
    fn admit(&mut self) {
        while !self.queue.is_empty() {
            let Some(free) = self.pick_free() else { return };
            let p = self.queue.pop_front().expect("not empty");
            self.seat(free, p);
        }
    }

    /// The free slot whose cache shares the longest prefix with the next
    /// queued prompt; with none, the least recently used.
    fn pick_free(&self) -> Option<usize> {
        let next = self.queue.front()?;
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.active.is_none())
            .max_by_key(|(_, s)| (s.reusable(&next.tokens, &next.lora), std::cmp::Reverse(s.last_used)))
            .map(|(i, _)| i)
    }

    /// Puts `p` into free slot `i` with what the cache can give it; a failure
    /// (a state that does not load) ends the request there.
    fn seat(&mut self, i: usize, p: Box<Pending>) {
        let admitted = Instant::now();
        let limit = p.tokens.len() - 1; // at least one token to decode for logits
        let seq = self.slots[i].seq;
        let setup = (|| -> Result<usize> {
            if let Some(state) = &p.resume {
                self.ctx.load_seq_state(seq, state)?;
                let slot = &mut self.slots[i];
                slot.cache.clear();
                slot.cache.extend_from_slice(state.tokens());
                let keep = state.tokens().len().min(limit);
                if keep < slot.cache.len() {
                    self.ctx.seq_rm(Some(seq), keep as Pos..)?;
                    slot.cache.truncate(keep);
                }
                return Ok(keep);
            }
            let own = self.slots[i].reusable(&p.tokens, &p.lora).min(limit);
            let other = self
                .slots
                .iter()
                .enumerate()
                .filter(|(j, s)| *j != i && s.active.is_some())
                .map(|(j, s)| (s.reusable(&p.tokens, &p.lora).min(limit), j))
                .max();
            if let Some((n, j)) = other.filter(|&(n, _)| n > own) {
                // Share a running request's cells (unified cache: no copy).
                let src = self.slots[j].seq;
                self.ctx.seq_rm(Some(seq), ..)?;
                self.ctx.seq_cp(src, seq, 0..n as Pos)?;
                let slot = &mut self.slots[i];
                slot.cache.clear();
                slot.cache.extend_from_slice(&p.tokens[..n]);
                return Ok(n);
            }
            let slot = &mut self.slots[i];
            if own < slot.cache.len() {
                // A recurrent memory cannot drop a partial range: start over.
                if !self.ctx.seq_rm(Some(seq), own as Pos..)? {
                    self.ctx.seq_rm(Some(seq), ..)?;
                    self.slots[i].cache.clear();
                    return Ok(0);
                }
                self.slots[i].cache.truncate(own);
            }
            Ok(own)
        })();
        let cached = match setup {
            Ok(n) => {
                // What is cached now was computed with (or is empty for)
                // this request's adapters.
                self.slots[i].cache_lora.clone_from(&p.lora);
                n
            }
            Err(e) => {
                let _ = self.ctx.seq_rm(Some(seq), ..);
                self.slots[i].cache.clear();
                self.finished += 1;
                self.publish();
                p.shared.send(Event::Failed(e), true);
                return;
            }
        };
        self.tick += 1;
        let text = TextAssembler::new(p.stop_strings.clone());
        let slot = &mut self.slots[i];
        slot.last_used = self.tick;
        slot.active = Some(Box::new(Active {
            p,
            order: self.tick,
            admitted,
            cached,
            next: None,
            text,
            generated: 0,
            first_token: None,
            last_token: None,
            shifts: 0,
            last_step: 0,
            follow: None,
        }));
        self.plan_follow(i);
    }

    /// When a request still reading its prompt will decode a longer start of
    /// this one's prompt than the cache holds now (requests arriving together
    /// with one system prompt), this one waits for it and shares those cells
    /// instead of decoding them again.
    fn plan_follow(&mut self, i: usize) {
        let a = self.slots[i].active.as_ref().expect("just seated");
        if a.p.resume.is_some() {
            return;
        }
        let have = self.slots[i].cache.len();
        let limit = a.p.tokens.len() - 1;
        let best = self
            .slots
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .filter_map(|(j, s)| {
                let b = s.active.as_ref()?;
                (b.generated == 0 && same_set(&b.p.lora, &a.p.lora))
                    .then(|| (lcp(&b.p.tokens, &a.p.tokens).min(limit), j, b.p.shared.id))
            })
            .max();
        if let Some((n, j, id)) = best {
            if n > have {
                self.slots[i].active.as_mut().expect("seated").follow = Some((j, id, n));
            }
        }
    }

    /// Whether slot `i` may decode its prompt this step: a follower waits
    /// until its leader holds the shared start, then takes those cells.
    fn ready(&mut self, i: usize) -> bool {
        let Some((j, id, n)) = self.slots[i].active.as_ref().and_then(|a| a.follow) else { return true };
        let leader = self.slots[j].active.as_ref().filter(|b| b.p.shared.id == id);
        let tokens = &self.slots[i].active.as_ref().expect("active").p.tokens;
        match leader {
            Some(_) if self.slots[j].cache.len() < n => false,
            Some(_) if lcp(&self.slots[j].cache, tokens) >= n => {
                let (src, dst) = (self.slots[j].seq, self.slots[i].seq);
                let shared = self.ctx.seq_rm(Some(dst), ..).and_then(|_| self.ctx.seq_cp(src, dst, 0..n as Pos));
                let slot = &mut self.slots[i];
                let a = slot.active.as_mut().expect("active");
                a.follow = None;
                slot.cache.clear();
                if shared.is_ok() {
                    slot.cache.extend_from_slice(&a.p.tokens[..n]);
                    a.cached = n;
                } else {
                    let _ = self.ctx.seq_rm(Some(dst), ..);
                    a.cached = 0;
                }
                true
            }
            // The leader is gone or went another way: decode it all here.
            _ => {
                self.slots[i].active.as_mut().expect("active").follow = None;
                true
            }
        }
    }

    /// Ends the request in slot `i` with an error.
    fn fail(&mut self, i: usize, e: Error) {
        if let Some(a) = self.slots[i].active.take() {
            self.finished += 1;
            self.tick += 1;
            self.slots[i].last_used = self.tick;
            self.publish();
            a.p.shared.send(Event::Failed(e), true);
        }
    }

    /// Makes room for one more token in slot `i` (which holds `n_ctx_slot`):
    /// llama.cpp's context shift, or `ContextFull`.
    fn shift(&mut self, i: usize) -> Result<()> {
        let a = self.slots[i].active.as_ref().expect("active");
        let full = Error::ContextFull {
            n_ctx: self.n_ctx_slot as u32,
            message: format!("the request used its {} cells (n_ctx / n_slots)", self.n_ctx_slot),
        };
        let Some(n_keep) = a.p.context_shift else { return Err(full) };
        let len = self.slots[i].cache.len();
        let n_keep = n_keep.min(len - 1);
        let n_discard = ((len - n_keep) / 2).max(1);
        let moved_from = n_keep + n_discard;
        // Cells shared with another sequence move for both: only shift when
        // the moved range is ours alone (an idle sharer is evicted instead).
        for j in 0..self.slots.len() {
            if j == i || lcp(&self.slots[j].cache, &self.slots[i].cache) <= moved_from {
                continue;
            }
            if self.slots[j].active.is_some() {
                return Err(full);
            }
            let seq = self.slots[j].seq;
            self.ctx.seq_rm(Some(seq), ..)?;
            self.slots[j].cache.clear();
        }
        let seq = self.slots[i].seq;
        self.ctx.seq_rm(Some(seq), n_keep as Pos..moved_from as Pos)?;
        self.ctx.seq_add(Some(seq), moved_from as Pos.., -(n_discard as Pos))?;
        self.slots[i].cache.drain(n_keep..moved_from);
        self.slots[i].active.as_mut().expect("active").shifts += 1;
        Ok(())
    }

    /// Builds the step's batch: one token per generating request, then prompt
    /// chunks in arrival order within the step budget.
    fn build_batch(&mut self) {
        self.batch.clear();
        self.entries.clear();
        // One adapter set per step (llama.cpp applies one per context): the
        // set of the request that has waited longest since it last decoded.
        let Some(group) = self.step_group() else { return };
        // Generating requests first.
        for i in 0..self.slots.len() {
            let Some(next) =
                self.slots[i].active.as_ref().filter(|a| in_group(&self.slots, a, group)).and_then(|a| a.next)
            else {
                continue;
            };
            if self.slots[i].cache.len() + 1 > self.n_ctx_slot {
                if let Err(e) = self.shift(i) {
                    self.fail(i, e);
                    continue;
                }
            }
            let slot = &self.slots[i];
            let pos = slot.cache.len();
            let row = self.batch.len() as i32;
            if self.batch.add(next, pos as Pos, &[slot.seq], true).is_err() {
                break;
            }
            self.entries.push(Entry { slot: i, n_before: pos, n_added: 1, row: Some(row) });
        }
        // Prompt chunks, first come first served.
        let mut budget = self.step_tokens.saturating_sub(self.batch.len());
        self.order.clear();
        let slots = &self.slots;
        self.order.extend((0..slots.len()).filter(|&i| {
            slots[i].active.as_ref().is_some_and(|a| a.next.is_none() && a.generated == 0 && in_group(slots, a, group))
        }));
        let slots = &self.slots;
        self.order.sort_by_key(|&i| slots[i].active.as_ref().map_or(u64::MAX, |a| a.order));
        for k in 0..self.order.len() {
            if budget == 0 {
                break;
            }
            let i = self.order[k];
            if !self.ready(i) {
                continue;
            }
            let slot = &self.slots[i];
            let a = slot.active.as_ref().expect("active");
            let done = slot.cache.len();
            let n = (a.p.tokens.len() - done).min(budget);
            let last = done + n == a.p.tokens.len();
            let row = last.then(|| (self.batch.len() + n - 1) as i32);
            if self.batch.add_sequence(&a.p.tokens[done..done + n], done as Pos, slot.seq, last).is_err() {
                break;
            }
            budget -= n;
            self.entries.push(Entry { slot: i, n_before: done, n_added: n, row });
        }
    }

    /// The slot whose adapter set this step decodes: of the requests with
    /// work, the one that decoded least recently (then the oldest).
    fn step_group(&self) -> Option<usize> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.active.as_ref().map(|a| (i, a)))
            .filter(|(_, a)| a.next.is_some() || a.generated == 0)
            .min_by_key(|(_, a)| (a.last_step, a.order))
            .map(|(i, _)| i)
    }

    /// Applies the adapter set of this step's requests (nothing to do when
    /// it is the context's already).
    fn apply_lora(&mut self) -> Result<()> {
        let Some(first) = self.entries.first() else { return Ok(()) };
        let a = self.slots[first.slot].active.as_ref().expect("active in its step");
        if a.p.lora.is_empty() {
            self.ctx.clear_lora();
            return Ok(());
        }
        // The context keeps the set without zero scales, in the order given
        // (canonical here): an unchanged set costs no call and no allocation.
        let wanted = a.p.lora.iter().filter(|(_, s)| *s != 0.0);
        let applied = self.ctx.lora();
        if wanted.clone().count() == applied.len()
            && wanted.clone().zip(applied).all(|((x, s), (y, t))| x.same(y) && s.to_bits() == t.to_bits())
        {
            return Ok(());
        }
        let set: Vec<(&LoraAdapter<'static>, f32)> = a.p.lora.iter().map(|(l, s)| (l, *s)).collect();
        self.ctx.set_lora(&set)
    }

    /// Evicts idle caches (least recently used first) until the cells the
    /// slots hold plus `extra` fit in the context.
    fn make_room(&mut self, extra: usize) {
        loop {
            let used: usize = self.slots.iter().map(|s| s.cache.len()).sum();
            if used + extra <= self.n_ctx {
                return;
            }
            let victim = self
                .slots
                .iter()
                .enumerate()
                .filter(|(_, s)| s.active.is_none() && !s.cache.is_empty())
                .min_by_key(|(_, s)| s.last_used)
                .map(|(i, _)| i);
            let Some(v) = victim else { return };
            let seq = self.slots[v].seq;
            let _ = self.ctx.seq_rm(Some(seq), ..);
            self.slots[v].cache.clear();
        }
    }

    /// Takes back what a failed or aborted decode left of this step.
    fn roll_back(&mut self) {
        for k in 0..self.entries.len() {
            let e = self.entries[k];
            let seq = self.slots[e.slot].seq;
            let _ = self.ctx.seq_rm(Some(seq), e.n_before as Pos..);
            self.slots[e.slot].cache.truncate(e.n_before);
        }
    }

    fn step(&mut self) {
        self.build_batch();
        if self.batch.is_empty() {
            return;
        }
        self.make_room(self.batch.len());
        if let Err(e) = self.apply_lora() {
            for k in 0..self.entries.len() {
                let slot = self.entries[k].slot;
                self.fail(slot, copy_error(&e));
            }
            self.publish();
            return;
        }
        self.armed.store(self.cancels.load(Ordering::Acquire), Ordering::Release);
        let mut result = self.ctx.decode(&mut self.batch);
        if matches!(result, Err(Error::ContextFull { .. })) {
            // Fragmentation or shared-cell accounting: drop every idle cache
            // and try once more.
            self.roll_back();
            for s in 0..self.slots.len() {
                if self.slots[s].active.is_none() && !self.slots[s].cache.is_empty() {
                    let seq = self.slots[s].seq;
                    let _ = self.ctx.seq_rm(Some(seq), ..);
                    self.slots[s].cache.clear();
                }
            }
            result = self.ctx.decode(&mut self.batch);
        }
        self.steps += 1;
        match result {
            Ok(()) => {}
            Err(Error::Aborted) => {
                // A request was cancelled: the next round drops it and
                // decodes the others again.
                self.roll_back();
                return;
            }
            Err(e) => {
                self.roll_back();
                for k in 0..self.entries.len() {
                    let slot = self.entries[k].slot;
                    self.fail(slot, copy_error(&e));
                }
                self.publish();
                return;
            }
        }
        self.decoded += self.batch.len() as u64;
        for k in 0..self.entries.len() {
            let e = self.entries[k];
            let slot = &mut self.slots[e.slot];
            let a = slot.active.as_mut().expect("active during its step");
            a.last_step = self.steps;
            match a.next.take() {
                Some(t) => slot.cache.push(t),
                None => slot.cache.extend_from_slice(&a.p.tokens[e.n_before..e.n_before + e.n_added]),
            }
            if let Some(row) = e.row {
                self.sample(e.slot, row);
            }
        }
        self.publish();
    }

    /// Samples slot `i`'s next token from `row`, streams it, and ends the
    /// request when it should.
    fn sample(&mut self, i: usize, row: i32) {
        let ctx = &self.ctx;
        let a = self.slots[i].active.as_mut().expect("active");
        let token = match a.p.sampler.sample(ctx, row) {
            Ok(t) => t,
            Err(e) => return self.fail(i, e),
        };
        let logprobs = match a.p.logprobs {
            Some(n) => match ctx.logits(row) {
                Ok(l) => Some(logprobs(l, token, n.min(l.len()))),
                Err(e) => return self.fail(i, e),
            },
            None => None,
        };
        let now = Instant::now();
        a.first_token.get_or_insert(now);
        a.last_token = Some(now);
        a.generated += 1;
        let vocab = ctx.vocab();
        let stop = if a.p.stop_tokens.contains(&token) {
            Some(StopReason::StopToken(token))
        } else if !a.p.ignore_eos && vocab.is_eog(token) {
            Some(StopReason::Eog)
        } else {
            None
        };
        let (text, reason) = if let Some(reason) = stop {
            let text = match a.text.push(true) {
                Assembled::Text(t) | Assembled::Stop(_, t) => t,
            };
            (text, Some(reason))
        } else {
            let last = a.generated >= a.p.max_tokens;
            if let Err(e) = vocab.token_to_piece_into(token, a.p.special, a.text.buffer()) {
                return self.fail(i, e);
            }
            match a.text.push(last) {
                Assembled::Stop(k, t) => (t, Some(StopReason::StopString(a.text.stop_string(k).to_string()))),
                Assembled::Text(t) => (t, last.then_some(StopReason::MaxTokens)),
            }
        };
        a.p.shared.send(Event::Piece(StreamPiece { token, text, logprobs }), false);
        match reason {
            None => a.next = Some(token),
            Some(reason) => self.finish(i, reason),
        }
    }

    fn finish(&mut self, i: usize, stop_reason: StopReason) {
        let seq = self.slots[i].seq;
        let a = self.slots[i].active.take().expect("active");
        let state = if a.p.save_state {
            match self.ctx.save_seq_state(seq, &self.slots[i].cache) {
                Ok(s) => Some(s),
                Err(e) => {
                    self.finished += 1;
                    self.publish();
                    a.p.shared.send(Event::Failed(e), true);
                    return;
                }
            }
        } else {
            None
        };
        let secs = |d: Duration| d.as_secs_f64();
        let first = a.first_token.unwrap_or_else(Instant::now);
        let last = a.last_token.unwrap_or(first);
        let decoded_prompt = a.p.tokens.len() - a.cached;
        let rate = |n: usize, t: f64| if n > 0 && t > 0.0 { n as f64 / t } else { 0.0 };
        let stats = RequestStats {
            queue_time: a.admitted - a.p.submitted,
            time_to_first_token: first - a.p.submitted,
            prompt_tokens: a.p.tokens.len(),
            cached_tokens: a.cached,
            generated_tokens: a.generated,
            prompt_tps: rate(decoded_prompt, secs(first - a.admitted)),
            generation_tps: rate(a.generated.saturating_sub(1), secs(last - first)),
            context_shifts: a.shifts,
        };
        self.finished += 1;
        self.tick += 1;
        self.slots[i].last_used = self.tick;
        self.publish();
        a.p.shared.send(Event::Done(Finished { stop_reason, stats, state }), true);
    }
}

/// The sampled token's log-probability and the `n` most likely tokens',
/// under the softmax of `logits`.
fn logprobs(logits: &[f32], token: Token, n: usize) -> Logprobs {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    let lse = max as f64 + sum.ln();
    let lp = |l: f32| (l as f64 - lse) as f32;
    let mut top: Vec<(Token, f32)> = Vec::with_capacity(n + 1);
    if n > 0 {
        for (id, &l) in logits.iter().enumerate() {
            if top.len() == n && l <= top[n - 1].1 {
                continue;
            }
            let at = top.partition_point(|&(_, x)| x >= l);
            top.insert(at, (Token(id as i32), l));
            top.truncate(n);
        }
    }
    for e in &mut top {
        e.1 = lp(e.1);
    }
    Logprobs { logprob: lp(logits.get(token.0 as usize).copied().unwrap_or(f32::NEG_INFINITY)), top }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logprobs_are_a_log_softmax() {
        let l = [1.0f32, 3.0, 2.0, 0.0];
        let p = logprobs(&l, Token(2), 2);
        let z: f64 = l.iter().map(|&x| (x as f64).exp()).sum();
        assert!((p.logprob as f64 - (2.0 - z.ln())).abs() < 1e-5);
        assert_eq!(p.top.iter().map(|t| t.0).collect::<Vec<_>>(), [Token(1), Token(2)]);
        assert!((p.top[0].1 as f64 - (3.0 - z.ln())).abs() < 1e-5);
        assert!(logprobs(&l, Token(0), 0).top.is_empty());
    }

    #[test]
    fn common_prefix() {
        let t = |v: &[i32]| v.iter().map(|&x| Token(x)).collect::<Vec<_>>();
        assert_eq!(lcp(&t(&[1, 2, 3]), &t(&[1, 2, 4])), 2);
        assert_eq!(lcp(&t(&[]), &t(&[1])), 0);
        assert_eq!(lcp(&t(&[5, 6]), &t(&[5, 6, 7])), 2);
    }
}
