//! ggml's RPC server (feature `rpc`) fed malformed and well-formed messages
//! over loopback. One server (`llama_rs::rpc::serve`, the CPU device, one
//! thread) runs on a thread of the fuzzing process; each input is one client
//! connection: HELLO, then up to 16 operations built by `arbitrary`, then the
//! connection is closed (the server frees that client's buffers and accepts
//! the next). Any abort, segfault or sanitizer report in the server thread
//! ends the process: a finding. docs/fuzzing.md ("RPC server target") lists
//! what the operations cover and the findings; docs/rpc-abort-paths.md
//! ("Server") the weak points S1-S14 they aim at.
//!
//! Known crash classes are avoided by default, so that a run can find new
//! ones: `LLAMA_RS_FUZZ_RPC_SEND_KNOWN=1` sends them too (see `Policy`).
//! `LLAMA_RS_FUZZ_TRACE=1` prints each frame sent.
#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use llama_rs::sys;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------- protocol --

// enum rpc_cmd (ggml-rpc.cpp).
const ALLOC_BUFFER: u8 = 0;
const GET_ALIGNMENT: u8 = 1;
const GET_MAX_SIZE: u8 = 2;
const BUFFER_GET_BASE: u8 = 3;
const FREE_BUFFER: u8 = 4;
const BUFFER_CLEAR: u8 = 5;
const SET_TENSOR: u8 = 6;
const SET_TENSOR_HASH: u8 = 7;
const GET_TENSOR: u8 = 8;
const COPY_TENSOR: u8 = 9;
const GRAPH_COMPUTE: u8 = 10;
const GET_DEVICE_MEMORY: u8 = 11;
const INIT_TENSOR: u8 = 12;
const GET_ALLOC_SIZE: u8 = 13;
const HELLO: u8 = 14;
const DEVICE_COUNT: u8 = 15;
const GRAPH_RECOMPUTE: u8 = 16;
const MEMSET_TENSOR: u8 = 17;
const CMD_COUNT: u8 = 19;

/// `sizeof(rpc_tensor)` (packed).
const TENSOR_SIZE: usize = 296;
const MAX_SRC: usize = 10;
/// `sizeof` of the fixed-size requests, by command; `None`: variable size
/// (SET_TENSOR, GRAPH_COMPUTE) or no such request.
fn fixed_request_size(cmd: u8) -> Option<usize> {
    Some(match cmd {
        ALLOC_BUFFER => 12,
        GET_ALIGNMENT | GET_MAX_SIZE | GET_DEVICE_MEMORY | GRAPH_RECOMPUTE => 4,
        BUFFER_GET_BASE | FREE_BUFFER => 8,
        BUFFER_CLEAR => 9,
        SET_TENSOR_HASH | GET_TENSOR => TENSOR_SIZE + 16,
        COPY_TENSOR => 2 * TENSOR_SIZE,
        INIT_TENSOR => TENSOR_SIZE,
        GET_ALLOC_SIZE => 4 + TENSOR_SIZE * (1 + MAX_SRC),
        DEVICE_COUNT => 0,
        MEMSET_TENSOR => TENSOR_SIZE + 17,
        _ => return None,
    })
}

/// Buffers are allocated up to this size (the server's memory stays small).
const MAX_ALLOC: u64 = 1 << 20;
/// SET_TENSOR and GRAPH_COMPUTE messages declare at most this size unless the
/// harness limit is lifted: the server zero-fills what the client declares
/// (S5), and libFuzzer's malloc limit (4 GiB) turns a larger declared size into
/// an out-of-memory "crash" that is the harness's, not the server's.
const MAX_VARIABLE_MSG: u64 = 2 << 20;
/// ALLOC_BUFFER sizes sent in raw frames are kept below this (same reason).
const MAX_RAW_ALLOC: u64 = 64 << 20;

/// `struct rpc_tensor`.
#[derive(Clone, Debug, Default)]
struct RpcTensor {
    id: u64,
    ty: u32,
    buffer: u64,
    ne: [u32; 4],
    nb: [u32; 4],
    op: u32,
    op_params: [i32; 16],
    flags: i32,
    src: [u64; MAX_SRC],
    view_src: u64,
    view_offs: u64,
    data: u64,
    use_count: i32,
}

impl RpcTensor {
    fn write(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&self.id.to_le_bytes());
        out.extend_from_slice(&self.ty.to_le_bytes());
        out.extend_from_slice(&self.buffer.to_le_bytes());
        self.ne.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
        self.nb.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
        out.extend_from_slice(&self.op.to_le_bytes());
        self.op_params.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
        out.extend_from_slice(&self.flags.to_le_bytes());
        self.src.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
        out.extend_from_slice(&self.view_src.to_le_bytes());
        out.extend_from_slice(&self.view_offs.to_le_bytes());
        out.extend_from_slice(&self.data.to_le_bytes());
        out.extend_from_slice(&[0u8; 64]); // name
        out.extend_from_slice(&self.use_count.to_le_bytes());
        debug_assert_eq!(out.len() - start, TENSOR_SIZE);
    }

    fn bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(TENSOR_SIZE);
        self.write(&mut v);
        v
    }

    /// The fields the server's checks read, from a serialized tensor.
    fn parse(b: &[u8]) -> RpcTensor {
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
        let mut t =
            RpcTensor { id: u64_at(0), ty: u32_at(8), buffer: u64_at(12), data: u64_at(220), ..Default::default() };
        for i in 0..4 {
            t.ne[i] = u32_at(20 + 4 * i);
            t.nb[i] = u32_at(36 + 4 * i);
        }
        t
    }
}

fn type_ok(ty: u32) -> bool {
    // SAFETY: the index is checked against GGML_TYPE_COUNT first; ggml's type
    // traits table has that many entries.
    ty < sys::GGML_TYPE_COUNT && unsafe { sys::ggml_blck_size(ty) } != 0
}

fn type_size(ty: u32) -> u64 {
    // SAFETY: as in `type_ok` (callers check it first).
    unsafe { sys::ggml_type_size(ty) as u64 }
}

fn blck_size(ty: u32) -> u64 {
    // SAFETY: as in `type_ok`.
    unsafe { sys::ggml_blck_size(ty) as u64 }
}

/// `ggml_nbytes` of the tensor the server builds (wrapping like size_t).
fn nbytes(t: &RpcTensor) -> u64 {
    if !type_ok(t.ty) || t.ne.contains(&0) {
        return 0;
    }
    let (ne, nb) = (t.ne.map(u64::from), t.nb.map(u64::from));
    let blck = blck_size(t.ty);
    let mut n = if blck == 1 {
        let mut n = type_size(t.ty);
        for i in 0..4 {
            n = n.wrapping_add((ne[i] - 1).wrapping_mul(nb[i]));
        }
        return n;
    } else {
        ne[0].wrapping_mul(nb[0]) / blck
    };
    for i in 1..4 {
        n = n.wrapping_add((ne[i] - 1).wrapping_mul(nb[i]));
    }
    n
}

/// Contiguous strides as ggml computes them (truncated to the wire's u32).
fn contiguous_nb(ty: u32, ne: [u32; 4]) -> [u32; 4] {
    if !type_ok(ty) {
        return [4, ne[0].max(1).wrapping_mul(4), 0, 0];
    }
    let mut nb = [0u64; 4];
    nb[0] = type_size(ty);
    nb[1] = nb[0].wrapping_mul(u64::from(ne[0]) / blck_size(ty));
    for i in 2..4 {
        nb[i] = nb[i - 1].wrapping_mul(u64::from(ne[i - 1]));
    }
    nb.map(|v| v as u32)
}

// ------------------------------------------------------------------ policy --

/// Crash classes already found (docs/fuzzing.md, "RPC server target"), which
/// the target does not send unless `LLAMA_RS_FUZZ_RPC_SEND_KNOWN=1`: a frame
/// that would reach one is dropped (not sent) whole.
#[derive(Clone, Copy, Debug)]
struct Policy {
    /// K1 (S3): a tensor naming a live buffer whose `data .. data + ggml_nbytes`
    /// is not inside that buffer (or wraps): `GGML_ASSERT` in
    /// `deserialize_tensor`.
    avoid_bounds: bool,
    /// K2 (S3): a tensor of a valid type whose `ne` product overflows int64:
    /// `GGML_ASSERT(INT64_MAX / ne[i] > current_nelements)` in
    /// `ggml_new_tensor_impl` (ggml.c), reached from `deserialize_tensor`.
    avoid_nelements: bool,
    /// K3 (S1/S8): graphs other than the target's well-formed ones (derived
    /// shapes, parameters and placement; `Node::Fuzzed` nodes, extra tensors,
    /// parameter overrides), since ggml's kernels and graph planner assert on
    /// almost any inconsistency.
    avoid_bad_graphs: bool,
    /// K5 (S3): SET_TENSOR/GET_TENSOR of a region inside the buffer (what
    /// the server checks) but past `ggml_nbytes(tensor)`: `GGML_ASSERT(offset +
    /// size <= ggml_nbytes(tensor))` in `ggml_backend_tensor_set`/`_get`
    /// (ggml-backend.cpp).
    avoid_region: bool,
    /// K6 (S9): COPY_TENSOR whose source and destination ranges (both
    /// `ggml_nbytes(src)` long) overlap: `memcpy` with overlapping ranges in
    /// `ggml_backend_cpu_buffer_cpy_tensor` (undefined behaviour; ASan's
    /// memcpy-param-overlap).
    avoid_overlap: bool,
    /// K4 (S4): a node id 0 in GRAPH_COMPUTE's node list: a NULL node, SEGV
    /// in `ggml_graph_plan` (`ggml_is_empty`).
    avoid_null_node: bool,
}

fn policy() -> Policy {
    static P: OnceLock<Policy> = OnceLock::new();
    *P.get_or_init(|| {
        // "1"/"all": every known class; else a comma-separated list of
        // bounds, nelements, graphs, null-node, region, overlap.
        let v = std::env::var("LLAMA_RS_FUZZ_RPC_SEND_KNOWN").unwrap_or_default();
        let send = |class: &str| v == "1" || v == "all" || v.split(',').any(|c| c.trim() == class);
        Policy {
            avoid_bounds: !send("bounds"),
            avoid_nelements: !send("nelements"),
            avoid_bad_graphs: !send("graphs"),
            avoid_null_node: !send("null-node"),
            avoid_region: !send("region"),
            avoid_overlap: !send("overlap"),
        }
    })
}

fn trace() -> bool {
    static T: OnceLock<bool> = OnceLock::new();
    *T.get_or_init(|| std::env::var("LLAMA_RS_FUZZ_TRACE").is_ok_and(|v| v == "1"))
}

// ------------------------------------------------------------------ server --

fn server_addr() -> SocketAddr {
    static ADDR: OnceLock<SocketAddr> = OnceLock::new();
    *ADDR.get_or_init(|| {
        let cpu =
            llama_rs::devices().into_iter().find(|d| d.kind == llama_rs::DeviceKind::Cpu).expect("a CPU device").index;
        let addr = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port");
        let params = llama_rs::rpc::RpcServerParams::new(&addr.to_string()).devices(&[cpu]).threads(1);
        std::thread::Builder::new()
            .name("rpc-server".into())
            .spawn(move || {
                let err = llama_rs::rpc::serve(&params).unwrap_err();
                panic!("the RPC server stopped: {err}");
            })
            .expect("spawn the server thread");
        let start = Instant::now();
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok() {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "the RPC server does not accept");
            std::thread::sleep(Duration::from_millis(20));
        }
        addr
    })
}

// ------------------------------------------------------------------- input --

#[derive(Arbitrary, Debug)]
struct Input {
    ops: Vec<Op>,
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// A well-formed command, possibly mangled on the wire.
    Cmd { cmd: Box<Cmd>, mangle: u8, extra: u16 },
    /// `| cmd | size | payload |` with any command byte and declared size.
    Frame { cmd: u8, size: Size, payload: Vec<u8> },
    /// Bytes as they come (the server parses them as frames).
    Garbage(Vec<u8>),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Size {
    Exact,
    Plus(u8),
    Minus(u8),
    Fixed(u16),
    Any(u64),
}

#[derive(Arbitrary, Debug)]
enum Cmd {
    Alloc { size: u32, dev: Dev },
    GetBase { buf: BufRef },
    Free { buf: BufRef },
    Clear { buf: BufRef, value: u8 },
    SetTensor { t: TSpec, offset: Off, len: u16, fill: u8, cache: bool },
    SetTensorHash { t: TSpec, offset: Off, hash: u64 },
    GetTensor { t: TSpec, offset: Off, size: Off },
    CopyTensor { src: TSpec, dst: TSpec },
    Memset { t: TSpec, offset: Off, size: Off, value: u8 },
    InitTensor { t: TSpec },
    AllocSize { dev: Dev, t: TSpec, srcs: Vec<TSpec> },
    Graph(Graph),
    Recompute { dev: Dev },
    Query { which: u8, dev: Dev },
    HelloAgain,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Dev {
    Zero,
    Any(u32),
}

impl Dev {
    fn get(self) -> u32 {
        match self {
            Dev::Zero => 0,
            Dev::Any(d) => d,
        }
    }
}

/// A buffer handle: one the server returned (live or freed), or not.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum BufRef {
    Live(u8),
    Freed(u8),
    Null,
    Near(u8, i16),
    Any(u64),
}

/// An offset or size: small, around the buffer's size, or anything.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Off {
    Zero,
    Small(u16),
    BufSize(i16),
    Any(u64),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Ty {
    F32,
    F16,
    Q4_0,
    Q8_0,
    I32,
    BF16,
    I64,
    Any(u32),
}

impl Ty {
    fn get(self) -> u32 {
        match self {
            Ty::F32 => sys::GGML_TYPE_F32,
            Ty::F16 => sys::GGML_TYPE_F16,
            Ty::Q4_0 => sys::GGML_TYPE_Q4_0,
            Ty::Q8_0 => sys::GGML_TYPE_Q8_0,
            Ty::I32 => sys::GGML_TYPE_I32,
            Ty::BF16 => sys::GGML_TYPE_BF16,
            Ty::I64 => sys::GGML_TYPE_I64,
            Ty::Any(t) => t % (sys::GGML_TYPE_COUNT + 3),
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Dim {
    One,
    Small(u8),
    Zero,
    Big(u32),
}

impl Dim {
    fn get(self) -> u32 {
        match self {
            Dim::One => 1,
            Dim::Small(n) => 1 + u32::from(n % 64),
            Dim::Zero => 0,
            Dim::Big(n) => n,
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Nb {
    Contiguous,
    Transposed,
    Tweak(u8, i32),
    Any([u32; 4]),
}

/// Where a tensor's data is.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Place {
    /// In a live buffer, at `offset % (size + 1)`.
    In(u8, u32),
    /// Ending `back` bytes before (negative: after) the buffer's end.
    AtEnd(u8, i16),
    /// Before the buffer's base.
    Before(u8, u16),
    /// No buffer, NULL data.
    Nowhere,
    /// A live buffer, NULL data.
    NullData(u8),
    /// Any buffer handle, any address.
    Any(BufRef, u64),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum OpKind {
    None,
    Listed(u8),
    Any(u32),
}

/// The graph ops the target knows (and `OpKind::Listed` picks from).
const OPS: [u32; 11] = [
    sys::GGML_OP_ADD,
    sys::GGML_OP_MUL,
    sys::GGML_OP_MUL_MAT,
    sys::GGML_OP_GET_ROWS,
    sys::GGML_OP_SET_ROWS,
    sys::GGML_OP_CPY,
    sys::GGML_OP_VIEW,
    sys::GGML_OP_RESHAPE,
    sys::GGML_OP_SOFT_MAX,
    sys::GGML_OP_ROPE,
    sys::GGML_OP_ACC,
];

impl OpKind {
    fn get(self) -> u32 {
        match self {
            OpKind::None => sys::GGML_OP_NONE,
            OpKind::Listed(i) => OPS[usize::from(i) % OPS.len()],
            OpKind::Any(o) => o % (sys::GGML_OP_COUNT + 8),
        }
    }
}

#[derive(Arbitrary, Debug, Clone)]
struct TSpec {
    ty: Ty,
    ne: [Dim; 4],
    nb: Nb,
    place: Place,
    op: OpKind,
    params: Vec<(u8, i32)>,
    flags: u8,
}

#[derive(Arbitrary, Debug)]
struct Graph {
    dev: Dev,
    /// The arena buffer for well-formed tensors, and where in it they start.
    arena: u8,
    start: u16,
    nodes: Vec<Node>,
    /// Extra tensors (fuzzed shapes), which `Node::Fuzzed` nodes may use.
    extra: Vec<TSpec>,
    /// Node ids appended to the node list.
    extra_ids: Vec<IdRef>,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum IdRef {
    Zero,
    Existing(u8),
    Unknown(u64),
}

#[derive(Arbitrary, Debug)]
enum Node {
    /// One of `OPS` with its sources, shapes and parameters derived as ggml's
    /// constructors build them, all F32/I32 tensors placed in the arena.
    Derived { op: u8, dims: [u8; 4], k: u8, mask: u8, params: Vec<(u8, i32)> },
    /// Any op over existing tensors (by index, forward references and cycles
    /// allowed), with a fuzzed result tensor.
    Fuzzed { t: TSpec, srcs: Vec<u8>, view_src: Option<(u8, u16)> },
}

// ------------------------------------------------------------------ client --

#[derive(Clone, Copy, Debug)]
struct Buf {
    ptr: u64,
    base: u64,
    size: u64,
    live: bool,
}

/// The server's frame parser, mirrored: fed every byte sent, it yields the
/// complete frames the server will read (assuming it accepts each).
#[derive(Clone, Debug, Default)]
struct Mirror {
    header: Vec<u8>,
    payload: Vec<u8>,
    want: Option<u64>,
    dead: bool,
}

impl Mirror {
    /// Feeds `bytes`; returns false if a frame would reach an avoided class.
    fn feed(&mut self, bytes: &[u8], check: &mut dyn FnMut(u8, &[u8]) -> bool, limits: bool) -> bool {
        for &b in bytes {
            if self.dead {
                return true;
            }
            match self.want {
                None => {
                    self.header.push(b);
                    if self.header.len() == 1 {
                        let cmd = self.header[0];
                        if cmd >= CMD_COUNT || cmd == HELLO || cmd == 18 {
                            self.dead = true; // the server closes
                        }
                    } else if self.header.len() == 9 {
                        let cmd = self.header[0];
                        let size = u64::from_le_bytes(self.header[1..9].try_into().unwrap());
                        match fixed_request_size(cmd) {
                            Some(n) if n as u64 != size => {
                                self.dead = true; // the server closes
                                return true;
                            }
                            Some(_) => {}
                            None if limits && size > MAX_VARIABLE_MSG => return false,
                            None => {}
                        }
                        self.want = Some(size);
                        self.payload.clear();
                    }
                }
                Some(_) => self.payload.push(b),
            }
            if let Some(want) = self.want {
                if self.payload.len() as u64 == want {
                    if !check(self.header[0], &self.payload) {
                        return false;
                    }
                    self.header.clear();
                    self.want = None;
                }
            }
        }
        true
    }
}

struct Client {
    sock: TcpStream,
    bufs: Vec<Buf>,
    mirror: Mirror,
    /// Responses can be read (no raw bytes sent since the last command).
    synced: bool,
    alive: bool,
}

const IO_TIMEOUT: Duration = Duration::from_secs(2);

impl Client {
    fn connect() -> Option<Client> {
        let addr = server_addr();
        let sock = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).ok()?;
        sock.set_nodelay(true).ok()?;
        let mut c = Client { sock, bufs: Vec::new(), mirror: Mirror::default(), synced: true, alive: true };
        // HELLO; the server may still be busy with the previous client (a
        // long graph), so the answer may take a while: up to 50 s, then the
        // server is taken as hung (libFuzzer's -timeout=60 catches it anyway).
        c.sock.set_read_timeout(Some(Duration::from_secs(50))).ok()?;
        let mut hello = vec![HELLO];
        hello.extend_from_slice(&24u64.to_le_bytes());
        hello.extend_from_slice(&[0u8; 24]);
        c.sock.write_all(&hello).ok()?;
        let mut rsp = [0u8; 8 + 28];
        if let Err(e) = c.sock.read_exact(&mut rsp) {
            panic!("the RPC server did not answer HELLO: {e}");
        }
        assert_eq!(u64::from_le_bytes(rsp[..8].try_into().unwrap()), 28);
        assert_eq!(rsp[8], 7, "protocol major version");
        c.sock.set_read_timeout(Some(IO_TIMEOUT)).ok()?;
        Some(c)
    }

    fn live(&self, ptr: u64) -> Option<Buf> {
        self.bufs.iter().rev().find(|b| b.live && b.ptr == ptr).copied()
    }

    /// Does the server abort on this tensor (in `deserialize_tensor`)?
    fn tensor_is_known_crash(&self, t: &RpcTensor, p: Policy) -> bool {
        if !type_ok(t.ty) {
            return false; // rejected
        }
        if p.avoid_nelements {
            let mut cur = i64::from(t.ne[0]);
            for &n in &t.ne[1..] {
                let n = i64::from(n);
                if n > 1 {
                    if i64::MAX / n <= cur {
                        return true;
                    }
                    cur *= n;
                }
            }
        }
        if p.avoid_bounds {
            if let Some(b) = self.live(t.buffer) {
                let size = nbytes(t);
                let end = t.data.wrapping_add(size);
                if end < t.data || t.data < b.base || end > b.base.wrapping_add(b.size) {
                    return true;
                }
            }
        }
        false
    }

    /// K5: a region the server accepts (inside a live buffer) but past the
    /// tensor's `ggml_nbytes` (over-approximated: any region past it).
    fn region_is_known_crash(&self, t: &RpcTensor, offset: u64, size: u64, p: Policy) -> bool {
        p.avoid_region
            && type_ok(t.ty)
            && self.live(t.buffer).is_some()
            && offset.checked_add(size).is_none_or(|end| end > nbytes(t))
    }

    /// Would this complete frame reach an avoided class?
    fn frame_is_avoided(&self, cmd: u8, payload: &[u8], p: Policy) -> bool {
        let tensor_at = |o: usize| RpcTensor::parse(&payload[o..o + TENSOR_SIZE]);
        let bad = |o: usize| self.tensor_is_known_crash(&tensor_at(o), p);
        match cmd {
            ALLOC_BUFFER => u64::from_le_bytes(payload[4..12].try_into().unwrap()) > MAX_RAW_ALLOC,
            SET_TENSOR if payload.len() >= TENSOR_SIZE + 9 => {
                let offset = u64::from_le_bytes(payload[TENSOR_SIZE + 1..TENSOR_SIZE + 9].try_into().unwrap());
                let size = (payload.len() - TENSOR_SIZE - 9) as u64;
                bad(0) || self.region_is_known_crash(&tensor_at(0), offset, size, p)
            }
            GET_TENSOR => {
                let offset = u64::from_le_bytes(payload[TENSOR_SIZE..TENSOR_SIZE + 8].try_into().unwrap());
                let size = u64::from_le_bytes(payload[TENSOR_SIZE + 8..TENSOR_SIZE + 16].try_into().unwrap());
                bad(0) || self.region_is_known_crash(&tensor_at(0), offset, size, p)
            }
            MEMSET_TENSOR | INIT_TENSOR => bad(0),
            COPY_TENSOR => {
                let (src, dst) = (tensor_at(0), tensor_at(TENSOR_SIZE));
                let n = nbytes(&src);
                let overlap = type_ok(src.ty)
                    && type_ok(dst.ty)
                    && self.live(src.buffer).is_some()
                    && self.live(dst.buffer).is_some()
                    && n > 0
                    && src.data < dst.data.saturating_add(n)
                    && dst.data < src.data.saturating_add(n);
                bad(0) || bad(TENSOR_SIZE) || (p.avoid_overlap && overlap)
            }
            GET_ALLOC_SIZE => {
                bad(4)
                    || (0..MAX_SRC)
                        .any(|i| tensor_at(4 + TENSOR_SIZE * (1 + i)).id != 0 && bad(4 + TENSOR_SIZE * (1 + i)))
            }
            GRAPH_COMPUTE => {
                // Every listed tensor (an over-approximation: the server
                // builds only those reachable from the nodes).
                if payload.len() < 8 {
                    return false;
                }
                let n_nodes = u32::from_le_bytes(payload[4..8].try_into().unwrap()) as usize;
                let at = 8 + n_nodes * 8;
                if payload.len() < at + 4 {
                    return false;
                }
                let null_node = (0..n_nodes).any(|i| payload[8 + 8 * i..16 + 8 * i] == [0u8; 8]);
                if p.avoid_null_node && null_node {
                    return true;
                }
                let n_tensors = u32::from_le_bytes(payload[at..at + 4].try_into().unwrap()) as usize;
                if payload.len() < at + 4 + n_tensors * TENSOR_SIZE {
                    return false;
                }
                (0..n_tensors).any(|i| bad(at + 4 + i * TENSOR_SIZE))
            }
            _ => false,
        }
    }

    /// Sends `bytes` unless the mirror says a frame in them is avoided.
    fn send(&mut self, bytes: &[u8]) -> bool {
        let p = policy();
        let mut m = self.mirror.clone();
        let ok = {
            let this = &*self;
            m.feed(bytes, &mut |cmd, payload| !this.frame_is_avoided(cmd, payload, p), true)
        };
        if !ok {
            if trace() {
                eprintln!("rpc_server: avoided {} bytes (cmd {})", bytes.len(), bytes.first().unwrap_or(&0));
            }
            return false;
        }
        self.mirror = m;
        if trace() {
            eprintln!("rpc_server: send {} bytes, cmd {}", bytes.len(), bytes.first().unwrap_or(&0));
        }
        if self.sock.write_all(bytes).is_err() {
            self.alive = false;
            return false;
        }
        true
    }

    /// Reads a `| size | data |` response of `n` bytes.
    fn recv(&mut self, n: usize) -> Option<Vec<u8>> {
        if !self.synced {
            self.drain();
            return None;
        }
        let mut size = [0u8; 8];
        if self.sock.read_exact(&mut size).is_err() {
            self.alive = false;
            return None;
        }
        if u64::from_le_bytes(size) != n as u64 {
            self.synced = false;
            return None;
        }
        let mut data = vec![0u8; n];
        if self.sock.read_exact(&mut data).is_err() {
            self.alive = false;
            return None;
        }
        Some(data)
    }

    /// Reads (and drops) whatever is there within a short time.
    fn drain(&mut self) {
        let _ = self.sock.set_read_timeout(Some(Duration::from_millis(5)));
        let mut buf = [0u8; 4096];
        loop {
            match self.sock.read(&mut buf) {
                Ok(0) => {
                    self.alive = false;
                    break;
                }
                Ok(_) => continue,
                Err(_) => break,
            }
        }
        let _ = self.sock.set_read_timeout(Some(IO_TIMEOUT));
    }

    fn buf(&self, r: BufRef) -> u64 {
        let live: Vec<&Buf> = self.bufs.iter().filter(|b| b.live).collect();
        let freed: Vec<&Buf> = self.bufs.iter().filter(|b| !b.live).collect();
        match r {
            BufRef::Live(i) if !live.is_empty() => live[usize::from(i) % live.len()].ptr,
            BufRef::Freed(i) if !freed.is_empty() => freed[usize::from(i) % freed.len()].ptr,
            BufRef::Live(_) | BufRef::Freed(_) | BufRef::Null => 0,
            BufRef::Near(i, d) => {
                if self.bufs.is_empty() {
                    0
                } else {
                    self.bufs[usize::from(i) % self.bufs.len()].ptr.wrapping_add_signed(i64::from(d))
                }
            }
            BufRef::Any(v) => v,
        }
    }

    fn live_buf(&self, i: u8) -> Option<Buf> {
        let live: Vec<&Buf> = self.bufs.iter().filter(|b| b.live).collect();
        (!live.is_empty()).then(|| *live[usize::from(i) % live.len()])
    }

    fn off(&self, o: Off, t: &RpcTensor) -> u64 {
        match o {
            Off::Zero => 0,
            Off::Small(n) => u64::from(n),
            Off::BufSize(d) => {
                let size = self.live(t.buffer).map_or(nbytes(t), |b| b.size);
                size.wrapping_add_signed(i64::from(d))
            }
            Off::Any(v) => v,
        }
    }

    fn tensor(&self, s: &TSpec, id: u64) -> RpcTensor {
        let ty = s.ty.get();
        let ne = s.ne.map(Dim::get);
        let contiguous = contiguous_nb(ty, ne);
        let nb = match s.nb {
            Nb::Contiguous => contiguous,
            Nb::Transposed => {
                let mut nb = contiguous;
                nb.swap(0, 1);
                nb
            }
            Nb::Tweak(i, d) => {
                let mut nb = contiguous;
                let i = usize::from(i % 4);
                nb[i] = nb[i].wrapping_add_signed(d);
                nb
            }
            Nb::Any(nb) => nb,
        };
        let mut t = RpcTensor { id, ty, ne, nb, op: s.op.get(), flags: i32::from(s.flags), ..Default::default() };
        for &(i, v) in s.params.iter().take(4) {
            t.op_params[usize::from(i % 16)] = v;
        }
        self.place(&mut t, s.place);
        t
    }

    fn place(&self, t: &mut RpcTensor, place: Place) {
        let size = nbytes(t);
        match place {
            Place::In(i, off) => {
                if let Some(b) = self.live_buf(i) {
                    t.buffer = b.ptr;
                    t.data = b.base + u64::from(off) % (b.size + 1);
                }
            }
            Place::AtEnd(i, back) => {
                if let Some(b) = self.live_buf(i) {
                    t.buffer = b.ptr;
                    t.data = (b.base + b.size).wrapping_sub(size).wrapping_sub_signed(i64::from(back));
                }
            }
            Place::Before(i, by) => {
                if let Some(b) = self.live_buf(i) {
                    t.buffer = b.ptr;
                    t.data = b.base.wrapping_sub(u64::from(by) + 1);
                }
            }
            Place::Nowhere => {}
            Place::NullData(i) => {
                if let Some(b) = self.live_buf(i) {
                    t.buffer = b.ptr;
                }
            }
            Place::Any(r, data) => {
                t.buffer = self.buf(r);
                t.data = data;
            }
        }
    }
}

fn frame(cmd: u8, payload: &[u8]) -> (u8, Vec<u8>) {
    (cmd, payload.to_vec())
}

fn wire(cmd: u8, size: u64, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(9 + payload.len());
    v.push(cmd);
    v.extend_from_slice(&size.to_le_bytes());
    v.extend_from_slice(payload);
    v
}

fn f32_bits(v: f32) -> i32 {
    v.to_bits() as i32
}

/// Builds a GRAPH_COMPUTE payload; `None` if the graph is not well-formed
/// and the policy avoids such graphs.
fn graph_payload(c: &Client, g: &Graph) -> Option<Vec<u8>> {
    let p = policy();
    let mut tensors: Vec<RpcTensor> = Vec::new();
    let mut node_ids: Vec<u64> = Vec::new();
    let arena = c.live_buf(g.arena);
    let mut cursor = arena.map_or(0, |b| b.base + u64::from(g.start % 256) * 32);
    let mut new_tensor = |tensors: &mut Vec<RpcTensor>, ty: u32, ne: [u32; 4]| -> usize {
        let mut t = RpcTensor { id: tensors.len() as u64 + 1, ty, ne, nb: contiguous_nb(ty, ne), ..Default::default() };
        if let Some(b) = arena {
            t.buffer = b.ptr;
            t.data = cursor;
            cursor += nbytes(&t).div_ceil(32) * 32;
        }
        tensors.push(t);
        tensors.len() - 1
    };
    // Fuzzed nodes: (tensor index, source refs, view source ref and offset).
    let mut fuzzed: Vec<(usize, &[u8], ViewRef)> = Vec::new();
    for node in g.nodes.iter().take(8) {
        match node {
            Node::Derived { op, dims, k, mask, params } => {
                let [a, b, cc, d] = dims.map(|v| 1 + u32::from(v % 8));
                let k = 1 + u32::from(k % 8);
                let (f32_, i32_) = (sys::GGML_TYPE_F32, sys::GGML_TYPE_I32);
                let op = OPS[usize::from(*op) % OPS.len()];
                let n = [a, b, cc, d];
                let (srcs, dst_ne, dst_ty, op_params): (Vec<usize>, [u32; 4], u32, Vec<i32>) = match op {
                    sys::GGML_OP_ADD | sys::GGML_OP_MUL => {
                        let s0 = new_tensor(&mut tensors, f32_, n);
                        let m = [0, 1, 2, 3].map(|i| if mask & (1 << i) != 0 { 1 } else { n[i] });
                        let s1 = new_tensor(&mut tensors, f32_, m);
                        (vec![s0, s1], n, f32_, vec![])
                    }
                    sys::GGML_OP_MUL_MAT => {
                        let s0 = new_tensor(&mut tensors, f32_, [a, b, cc, d]);
                        let s1 = new_tensor(&mut tensors, f32_, [a, k, cc, d]);
                        (vec![s0, s1], [b, k, cc, d], f32_, vec![])
                    }
                    sys::GGML_OP_GET_ROWS => {
                        let s0 = new_tensor(&mut tensors, f32_, [a, b, cc, 1]);
                        let s1 = new_tensor(&mut tensors, i32_, [k, cc, 1, 1]);
                        (vec![s0, s1], [a, k, cc, 1], f32_, vec![])
                    }
                    sys::GGML_OP_SET_ROWS => {
                        let s0 = new_tensor(&mut tensors, f32_, [a, k, cc, d]);
                        let s1 = new_tensor(&mut tensors, i32_, [k, cc, d, 1]);
                        (vec![s0, s1], [a, b, cc, d], f32_, vec![])
                    }
                    sys::GGML_OP_CPY => {
                        let s0 = new_tensor(&mut tensors, f32_, n);
                        let ty = if mask & 1 != 0 { sys::GGML_TYPE_F16 } else { f32_ };
                        let s1 = new_tensor(&mut tensors, ty, n);
                        (vec![s0, s1], n, ty, vec![])
                    }
                    sys::GGML_OP_VIEW | sys::GGML_OP_RESHAPE => {
                        let s0 = new_tensor(&mut tensors, f32_, n);
                        (vec![s0], [a * b, cc, d, 1], f32_, vec![])
                    }
                    sys::GGML_OP_SOFT_MAX => {
                        let s0 = new_tensor(&mut tensors, f32_, n);
                        (vec![s0], n, f32_, vec![f32_bits(1.0), f32_bits(0.0)])
                    }
                    sys::GGML_OP_ROPE => {
                        let s0 = new_tensor(&mut tensors, f32_, [2 * a, b, k, 1]);
                        let s1 = new_tensor(&mut tensors, i32_, [k, 1, 1, 1]);
                        let mut pp = vec![0, 2 * a as i32, 0, 0, 0];
                        pp.extend([10000.0, 1.0, 0.0, 1.0, 32.0, 1.0].map(f32_bits));
                        (vec![s0, s1], [2 * a, b, k, 1], f32_, pp)
                    }
                    _ => {
                        // ACC: b (a smaller block) added into a copy of a.
                        let s0 = new_tensor(&mut tensors, f32_, n);
                        let m = [0, 1, 2, 3].map(|i| 1 + (u32::from(*mask) >> (2 * i)) % n[i]);
                        let s1 = new_tensor(&mut tensors, f32_, m);
                        let pp = vec![(4 * a) as i32, (4 * a * b) as i32, (4 * a * b * cc) as i32, 0, 0];
                        (vec![s0, s1], n, f32_, pp)
                    }
                };
                let di = new_tensor(&mut tensors, dst_ty, dst_ne);
                let dst_id = tensors[di].id;
                let src_ids: Vec<u64> = srcs.iter().map(|&i| tensors[i].id).collect();
                let (src0_data, src0_buffer) = (tensors[srcs[0]].data, tensors[srcs[0]].buffer);
                let t = &mut tensors[di];
                t.op = op;
                for (i, v) in op_params.iter().enumerate() {
                    t.op_params[i] = *v;
                }
                for (i, id) in src_ids.iter().enumerate() {
                    t.src[i] = *id;
                }
                if op == sys::GGML_OP_VIEW || op == sys::GGML_OP_RESHAPE {
                    t.view_src = src_ids[0];
                    t.data = src0_data;
                    t.buffer = src0_buffer;
                }
                if !params.is_empty() {
                    if p.avoid_bad_graphs {
                        return None;
                    }
                    let t = &mut tensors[di];
                    for &(i, v) in params.iter().take(4) {
                        t.op_params[usize::from(i % 16)] = v;
                    }
                }
                node_ids.push(dst_id);
            }
            Node::Fuzzed { t, srcs, view_src } => {
                if p.avoid_bad_graphs {
                    return None;
                }
                let id = tensors.len() as u64 + 1;
                let rt = c.tensor(t, id);
                tensors.push(rt);
                fuzzed.push((tensors.len() - 1, srcs.as_slice(), *view_src));
                node_ids.push(id);
            }
        }
    }
    if p.avoid_bad_graphs && (!g.extra.is_empty() || !g.extra_ids.is_empty() || node_ids.is_empty() || arena.is_none())
    {
        return None;
    }
    for s in g.extra.iter().take(4) {
        let id = tensors.len() as u64 + 1;
        tensors.push(c.tensor(s, id));
    }
    // Fuzzed nodes' links, now that every id is known (forward references
    // and cycles possible).
    let total = tensors.len() as u64;
    for (i, srcs, view_src) in fuzzed {
        for (j, &s) in srcs.iter().take(MAX_SRC).enumerate() {
            tensors[i].src[j] = if s == 255 { 999 } else { u64::from(s) % total + 1 };
        }
        if let Some((v, offs)) = view_src {
            tensors[i].view_src = u64::from(v) % total + 1;
            tensors[i].view_offs = u64::from(offs);
        }
    }
    for r in g.extra_ids.iter().take(4) {
        node_ids.push(match *r {
            IdRef::Zero if p.avoid_null_node => continue,
            IdRef::Zero => 0,
            IdRef::Existing(i) => u64::from(i) % total.max(1) + 1,
            IdRef::Unknown(v) => v,
        });
    }
    let mut out = Vec::new();
    out.extend_from_slice(&g.dev.get().to_le_bytes());
    out.extend_from_slice(&(node_ids.len() as u32).to_le_bytes());
    node_ids.iter().for_each(|id| out.extend_from_slice(&id.to_le_bytes()));
    out.extend_from_slice(&(tensors.len() as u32).to_le_bytes());
    tensors.iter().for_each(|t| t.write(&mut out));
    Some(out)
}

/// The frame of a well-formed command, and the response size it expects
/// (`None`: no response).
/// A view source (tensor index) and offset.
type ViewRef = Option<(u8, u16)>;

/// A command's frame (code, payload) and its response size.
type Built = ((u8, Vec<u8>), Option<usize>);

fn build(c: &Client, cmd: &Cmd) -> Option<Built> {
    let dev_req = |d: Dev| d.get().to_le_bytes().to_vec();
    Some(match cmd {
        Cmd::Alloc { size, dev } => {
            let mut p = dev_req(*dev);
            p.extend_from_slice(&(u64::from(*size) % (MAX_ALLOC + 1)).to_le_bytes());
            (frame(ALLOC_BUFFER, &p), Some(16))
        }
        Cmd::GetBase { buf } => (frame(BUFFER_GET_BASE, &c.buf(*buf).to_le_bytes()), Some(8)),
        Cmd::Free { buf } => (frame(FREE_BUFFER, &c.buf(*buf).to_le_bytes()), None),
        Cmd::Clear { buf, value } => {
            let mut p = c.buf(*buf).to_le_bytes().to_vec();
            p.push(*value);
            (frame(BUFFER_CLEAR, &p), None)
        }
        Cmd::SetTensor { t, offset, len, fill, cache } => {
            let rt = c.tensor(t, 1);
            let mut p = rt.bytes();
            p.push(u8::from(*cache));
            p.extend_from_slice(&c.off(*offset, &rt).to_le_bytes());
            let len = usize::from(*len) * 16; // up to 1 MiB
            p.extend((0..len).map(|i| fill.wrapping_add(i as u8)));
            (frame(SET_TENSOR, &p), None)
        }
        Cmd::SetTensorHash { t, offset, hash } => {
            let rt = c.tensor(t, 1);
            let mut p = rt.bytes();
            p.extend_from_slice(&c.off(*offset, &rt).to_le_bytes());
            p.extend_from_slice(&hash.to_le_bytes());
            (frame(SET_TENSOR_HASH, &p), Some(1))
        }
        Cmd::GetTensor { t, offset, size } => {
            let rt = c.tensor(t, 1);
            let mut p = rt.bytes();
            p.extend_from_slice(&c.off(*offset, &rt).to_le_bytes());
            let size = c.off(*size, &rt);
            p.extend_from_slice(&size.to_le_bytes());
            // The server answers only if the region is inside the buffer
            // (<= 1 MiB); otherwise it closes.
            let n = if size <= MAX_ALLOC { size as usize } else { 0 };
            (frame(GET_TENSOR, &p), Some(n))
        }
        Cmd::CopyTensor { src, dst } => {
            let mut p = c.tensor(src, 1).bytes();
            c.tensor(dst, 2).write(&mut p);
            (frame(COPY_TENSOR, &p), Some(1))
        }
        Cmd::Memset { t, offset, size, value } => {
            let rt = c.tensor(t, 1);
            let mut p = rt.bytes();
            p.extend_from_slice(&c.off(*offset, &rt).to_le_bytes());
            p.extend_from_slice(&c.off(*size, &rt).to_le_bytes());
            p.push(*value);
            (frame(MEMSET_TENSOR, &p), None)
        }
        Cmd::InitTensor { t } => (frame(INIT_TENSOR, &c.tensor(t, 1).bytes()), None),
        Cmd::AllocSize { dev, t, srcs } => {
            let mut p = dev_req(*dev);
            c.tensor(t, 1).write(&mut p);
            for i in 0..MAX_SRC {
                match srcs.get(i) {
                    Some(s) => c.tensor(s, i as u64 + 2).write(&mut p),
                    None => RpcTensor::default().write(&mut p),
                }
            }
            (frame(GET_ALLOC_SIZE, &p), Some(8))
        }
        Cmd::Graph(g) => (frame(GRAPH_COMPUTE, &graph_payload(c, g)?), None),
        Cmd::Recompute { dev } => (frame(GRAPH_RECOMPUTE, &dev_req(*dev)), None),
        Cmd::Query { which, dev } => match which % 4 {
            0 => (frame(GET_ALIGNMENT, &dev_req(*dev)), Some(8)),
            1 => (frame(GET_MAX_SIZE, &dev_req(*dev)), Some(8)),
            2 => (frame(GET_DEVICE_MEMORY, &dev_req(*dev)), Some(16)),
            _ => (frame(DEVICE_COUNT, &[]), Some(4)),
        },
        Cmd::HelloAgain => (frame(HELLO, &[0u8; 24]), Some(28)),
    })
}

fn run_cmd(c: &mut Client, cmd: &Cmd, mangle: u8, extra: u16) {
    let Some(((code, payload), rsp)) = build(c, cmd) else { return };
    // mangle: 0-191 as built; else a wrong declared size or a cut payload.
    let (size, body): (u64, &[u8]) = match mangle {
        0..=191 => (payload.len() as u64, &payload),
        192..=207 => (payload.len() as u64 + 1 + u64::from(extra % 64), &payload),
        208..=223 => (payload.len().saturating_sub(1 + usize::from(extra % 64)) as u64, &payload),
        224..=239 => (payload.len() as u64, &payload[..usize::from(extra) % (payload.len() + 1)]),
        _ => (u64::from(extra), &payload[..usize::from(extra).min(payload.len())]),
    };
    let mangled = mangle > 191;
    if !c.send(&wire(code, size, body)) {
        return;
    }
    if mangled {
        c.synced = false;
    }
    let Some(n) = rsp else { return };
    let Some(data) = c.recv(n) else { return };
    if let Cmd::Alloc { .. } = cmd {
        let ptr = u64::from_le_bytes(data[..8].try_into().unwrap());
        let size = u64::from_le_bytes(data[8..16].try_into().unwrap());
        if ptr == 0 {
            return;
        }
        // Its base, as the client asks.
        if !c.send(&wire(BUFFER_GET_BASE, 8, &ptr.to_le_bytes())) {
            return;
        }
        if let Some(b) = c.recv(8) {
            let base = u64::from_le_bytes(b[..8].try_into().unwrap());
            c.bufs.iter_mut().filter(|b| b.ptr == ptr).for_each(|b| b.live = false);
            c.bufs.push(Buf { ptr, base, size, live: true });
        }
    }
    if let Cmd::Free { buf } = cmd {
        let ptr = c.buf(*buf);
        c.bufs.iter_mut().filter(|b| b.ptr == ptr).for_each(|b| b.live = false);
    }
}

fuzz_target!(|input: Input| {
    let Some(mut c) = Client::connect() else { return };
    for op in input.ops.iter().take(16) {
        if !c.alive {
            break;
        }
        match op {
            Op::Cmd { cmd, mangle, extra } => run_cmd(&mut c, cmd, *mangle, *extra),
            Op::Frame { cmd, size, payload } => {
                let payload = &payload[..payload.len().min(4096)];
                let n = payload.len() as u64;
                let size = match *size {
                    Size::Exact => n,
                    Size::Plus(d) => n + u64::from(d),
                    Size::Minus(d) => n.saturating_sub(u64::from(d)),
                    Size::Fixed(v) => u64::from(v),
                    Size::Any(v) => v,
                };
                if c.send(&wire(*cmd, size, payload)) {
                    c.synced = false;
                }
            }
            Op::Garbage(bytes) => {
                if c.send(&bytes[..bytes.len().min(4096)]) {
                    c.synced = false;
                }
            }
        }
    }
    // A last round trip, so that the server has processed everything sent
    // before the next input connects (unless the stream is out of sync).
    if c.alive && c.synced && c.send(&wire(DEVICE_COUNT, 0, &[])) {
        let _ = c.recv(4);
    }
    let _ = c.sock.shutdown(Shutdown::Both);
});
