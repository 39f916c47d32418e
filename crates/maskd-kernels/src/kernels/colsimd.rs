//! Column-SIMD "permute" kernels (x86-64 AVX2+FMA and AVX-512F).
//!
//! Design (measured in `shared/PLATFORM.md`, "What a 2:4 sparse kernel can do"):
//! SIMD across `L` output columns (`L` = 16 for AVX-512, 8 for AVX2), inputs
//! selected by a register permute, no transposes.
//!
//! * `K` is cut into chunks of `L` inputs; `M` must divide `L`, so a chunk holds
//!   `L/M` whole groups and every column keeps exactly `S = L/M * N` values in it
//!   (8 for 2:4 on AVX-512, 4 on AVX2).
//! * Packed once at load, per block of `L` columns and per chunk, one *tile*:
//!   `S` value vectors (slot `s`, lane `j` = the `s`-th kept weight of column `j`),
//!   then `ceil(S/8)` index vectors: lane `j` holds the chunk-relative positions
//!   (`0..L`) of its 8 next slots as 4-bit fields, slot `s` at bits `4*(s%8)`.
//!   Tiles of one column block are contiguous along `K`; the buffer is 64-byte
//!   aligned and every tile is a whole number of vectors, so all weight loads are
//!   aligned. Missing columns (N % L) and groups past `K` are zero weights.
//! * Loop order: panels of `PANEL_ROWS` rows; per panel, column blocks (`CV` at a
//!   time); per column block, register blocks of rows, so a column block's
//!   weights stay in L1 while the panel's rows stream through.
//! * Micro-kernel: an `R` rows x `CV` column-vectors block of accumulators. Per
//!   chunk, load each row's `L` inputs straight from `x` (masked on the `K` tail);
//!   per slot, load the weight vector, permute each row's inputs by the index
//!   vector, FMA, shift the indices right by 4. Accumulators start from the bias
//!   and go straight to `y` (masked on the column tail).
//!
//! The micro-kernel is written once, in [`colsimd_kernel!`], against a handful of
//! vector primitives (`vload`, `vperm`, `vfma`, ...) that each backend module
//! defines: `x86.rs` maps them to AVX2 / AVX-512 intrinsics, and the tests map them
//! to plain arrays so the shared logic (tails, packing, index fields) is checked on
//! any CPU, including one without AVX-512.

use crate::NmMatrix;

/// Rows per panel: every column block runs over one panel of rows before the
/// next panel starts. Without panels, column-block-outer order writes `y` in
/// 32/64-byte column strips across all `T` rows, and for N >= 576 `y` plus `x`
/// overflow a 512 KiB L2 (measured in one process on Zen 3: qkv at T=196 went
/// from 1.02x to 1.2x of tract with panels of 32-96 rows; 49 tokens unchanged).
pub(crate) const PANEL_ROWS: usize = 48;

/// One 64-byte line: the unit of the aligned buffers.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(crate) struct Line([f32; 16]);

/// A 64-byte aligned `f32` buffer (index vectors are stored as `u32` bit patterns).
#[derive(Clone)]
pub(crate) struct AlignedBuf(Vec<Line>);

impl AlignedBuf {
    fn zeroed(floats: usize) -> AlignedBuf {
        AlignedBuf(vec![Line([0.0; 16]); floats.div_ceil(16)])
    }

    fn as_mut_slice(&mut self) -> &mut [f32] {
        let len = self.0.len() * 16;
        // SAFETY: `Line` is `repr(C)` around `[f32; 16]` with no padding (64 bytes,
        // align 64), so the vector's storage is `len` contiguous initialised f32s.
        unsafe { std::slice::from_raw_parts_mut(self.0.as_mut_ptr().cast::<f32>(), len) }
    }

    pub(crate) fn as_ptr(&self) -> *const f32 {
        self.0.as_ptr().cast()
    }

    pub(crate) fn bytes(&self) -> usize {
        self.0.len() * 64
    }
}

/// Weights packed for one lane width `L`.
#[derive(Clone)]
pub(crate) struct Packed {
    pub(crate) lanes: usize,
    pub(crate) k: usize,
    pub(crate) n: usize,
    /// Column blocks of `L`: `ceil(n / L)`.
    pub(crate) nblocks: usize,
    /// Chunks of `L` inputs: `ceil(k / L)`.
    pub(crate) nchunks: usize,
    /// Chunks with all `L` inputs inside `k`.
    pub(crate) full_chunks: usize,
    /// Inputs in the last, partial chunk (`k % L`), 0 if none.
    pub(crate) tail_k: usize,
    /// Kept values per column per chunk: `L/M * N`.
    pub(crate) slots: usize,
    /// Index vectors per tile: `ceil(slots / 8)`.
    pub(crate) nidx: usize,
    /// Floats per tile: `(slots + nidx) * L`.
    pub(crate) tile: usize,
    /// Floats per column block: `nchunks * tile`.
    pub(crate) block_stride: usize,
    pub(crate) data: AlignedBuf,
    /// Bias padded with zeros to `nblocks * L`.
    pub(crate) bias: AlignedBuf,
}

impl Packed {
    /// Packs `m` for lane width `lanes` (8 or 16); `None` when `M` does not divide it.
    pub(crate) fn new(m: &NmMatrix, bias: Option<&[f32]>, lanes: usize) -> Option<Packed> {
        let p = m.pattern();
        if !lanes.is_multiple_of(p.m()) {
            return None;
        }
        let (k, n) = (m.k(), m.n());
        let (gpc, slots) = (lanes / p.m(), lanes / p.m() * p.n());
        let nidx = slots.div_ceil(8);
        let tile = (slots + nidx) * lanes;
        let (nblocks, nchunks) = (n.div_ceil(lanes), k.div_ceil(lanes));
        let block_stride = nchunks * tile;
        let mut data = AlignedBuf::zeroed(nblocks * block_stride);
        let buf = data.as_mut_slice();
        for b in 0..nblocks {
            for ch in 0..nchunks {
                let t = &mut buf[b * block_stride + ch * tile..][..tile];
                for j in 0..lanes.min(n - b * lanes) {
                    let col = b * lanes + j;
                    for gl in 0..gpc {
                        let g = ch * gpc + gl;
                        if g >= m.groups() {
                            break; // past K: zero weights, index 0
                        }
                        for sn in 0..p.n() {
                            let s = gl * p.n() + sn;
                            let pos = gl * p.m() + m.index(g, sn, col);
                            // A slot in the tail group's padding holds 0.0 and its
                            // position lies in the masked-off part of the chunk.
                            t[s * lanes + j] = m.value(g, sn, col);
                            let f = &mut t[(slots + s / 8) * lanes + j];
                            *f = f32::from_bits(f.to_bits() | (pos as u32) << (4 * (s % 8)));
                        }
                    }
                }
            }
        }
        let mut b = AlignedBuf::zeroed(nblocks * lanes);
        if let Some(bias) = bias {
            b.as_mut_slice()[..n].copy_from_slice(bias);
        }
        Some(Packed {
            lanes,
            k,
            n,
            nblocks,
            nchunks,
            full_chunks: k / lanes,
            tail_k: k % lanes,
            slots,
            nidx,
            tile,
            block_stride,
            data,
            bias: b,
        })
    }

    pub(crate) fn bytes(&self) -> usize {
        self.data.bytes() + self.bias.bytes()
    }
}

/// Stamps the column-SIMD kernel into the invoking module, which must define
/// `LANES`; `SUBW`, the inputs one permute selects from (`LANES` for a full
/// permute, 4 for the in-lane `vpermilps`) and `XSUB = LANES / SUBW`; vector types
/// `VF` / `VI`; and these primitives, all `unsafe fn`: `vzero`, `vzero_i`, `vload`
/// (aligned), `vloadx(p)` (the `SUBW` inputs at `p` as `vperm` expects them),
/// `vloadx_part(p, n)` (the same with only `n < SUBW` inputs, rest 0, reads only
/// `n` floats), `vloadi` (aligned index vector), `vperm(idx, x)` (lane `l` = input
/// `idx[l] % SUBW` of `x`), `vsrl4`, `vfma(a, b, c)` = `a*b + c`, `vstoreu`,
/// `vstoreu_part(p, v, n)` (writes only `n` floats).
///
/// Index fields hold positions in the whole `LANES`-input chunk; since sub-chunks
/// are `SUBW`-aligned, `pos % SUBW` is the position inside the slot's sub-chunk,
/// so one packed layout serves full and in-lane permutes.
///
/// Arguments: attributes for the generated functions (the target features), then
/// the register block `R` rows x `CV` column vectors.
///
/// Generated: `unsafe fn run(p: &Packed, x: *const f32, t: usize, y: *mut f32)`
/// computing `y[t, n] = x[t, k] · W + bias` for contiguous row-major `x` and `y`.
macro_rules! colsimd_kernel {
    ($(#[$attr:meta])* ; R = $r:literal, CV = $cv:literal) => {
        /// Register block size in rows.
        pub(crate) const ROWS: usize = $r;
        /// Register block size in column vectors.
        pub(crate) const COL_VECS: usize = $cv;

        /// Computes rows `0..R` of `y` for column blocks `b0..b0+CV`.
        /// `S` is the slot count when known at compile time (0: read `p.slots`).
        ///
        /// # Safety
        /// `x` points to `R` readable rows of `p.k` floats, `y` to `R` writable rows
        /// of `p.n` floats, `b0 + CV <= p.nblocks`, and the target features are present.
        $(#[$attr])*
        unsafe fn tile<const R: usize, const CV: usize, const S: usize>(
            p: &$crate::kernels::colsimd::Packed,
            x: *const f32,
            y: *mut f32,
            b0: usize,
        ) {
            debug_assert!(p.lanes == LANES && b0 + CV <= p.nblocks);
            debug_assert!(S == 0 || S == p.slots);
            let (k, n) = (p.k, p.n);
            let slots = if S > 0 { S } else { p.slots };
            debug_assert_eq!(p.nidx, slots.div_ceil(8));
            let mut acc = [[vzero(); CV]; R];
            for c in 0..CV {
                // SAFETY: the bias buffer holds nblocks * LANES floats from a
                // 64-byte aligned base; block offsets are whole vectors, so aligned.
                let b = vload(p.bias.as_ptr().add((b0 + c) * LANES));
                for row in acc.iter_mut() {
                    row[c] = b;
                }
            }
            let w0 = p.data.as_ptr().add(b0 * p.block_stride);
            // Slots are ordered by group, so each sub-chunk of SUBW inputs owns an
            // equal run of slots (M divides SUBW).
            let per_sub = slots / XSUB;
            debug_assert_eq!(per_sub * XSUB, slots);
            let mut xr = [vzero(); R];
            for ch in 0..p.nchunks {
                let wt = w0.add(ch * p.tile);
                let mut idx = [vzero_i(); CV];
                for c in 0..CV {
                    idx[c] = vloadi(wt.add(c * p.block_stride + slots * LANES));
                }
                for sub in 0..XSUB {
                    let xo = ch * LANES + sub * SUBW;
                    if ch < p.full_chunks {
                        for r in 0..R {
                            // SAFETY: row r has k >= xo + SUBW floats.
                            xr[r] = vloadx(x.add(r * k + xo));
                        }
                    } else {
                        // The partial last chunk: only `left` inputs remain.
                        let left = p.tail_k.saturating_sub(sub * SUBW).min(SUBW);
                        for r in 0..R {
                            // SAFETY: reads only the `left` floats left in row r.
                            xr[r] = if left == SUBW {
                                vloadx(x.add(r * k + xo))
                            } else if left > 0 {
                                vloadx_part(x.add(r * k + xo), left)
                            } else {
                                vzero()
                            };
                        }
                    }
                    for s in sub * per_sub..(sub + 1) * per_sub {
                        for c in 0..CV {
                            // SAFETY (loads below): tile (b0 + c, ch) lies inside
                            // `data` and starts on a 64-byte boundary; slot s and
                            // its index vector are whole vectors inside it.
                            let wc = wt.add(c * p.block_stride);
                            if s % 8 == 0 && s > 0 {
                                idx[c] = vloadi(wc.add((slots + s / 8) * LANES));
                            }
                            let wv = vload(wc.add(s * LANES));
                            for r in 0..R {
                                acc[r][c] = vfma(vperm(idx[c], xr[r]), wv, acc[r][c]);
                            }
                            idx[c] = vsrl4(idx[c]);
                        }
                    }
                }
            }
            for c in 0..CV {
                let col = (b0 + c) * LANES;
                let valid = n - col;
                for r in 0..R {
                    // SAFETY: row r of y has n floats; at most `valid` are written
                    // from column `col`.
                    let dst = y.add(r * n + col);
                    if valid >= LANES {
                        vstoreu(dst, acc[r][c]);
                    } else {
                        vstoreu_part(dst, acc[r][c], valid);
                    }
                }
            }
        }

        /// All rows `0..t` for column blocks `b0..b0+CV`: full `R`-row blocks, then
        /// the remainder as blocks of 8, 4, 2, 1 rows.
        $(#[$attr])*
        unsafe fn rows<const CV: usize, const S: usize>(
            p: &$crate::kernels::colsimd::Packed,
            x: *const f32,
            t: usize,
            y: *mut f32,
            b0: usize,
        ) {
            let (k, n) = (p.k, p.n);
            let mut r0 = 0;
            while r0 + $r <= t {
                tile::<$r, CV, S>(p, x.add(r0 * k), y.add(r0 * n), b0);
                r0 += $r;
            }
            if $r > 8 && t - r0 >= 8 {
                tile::<8, CV, S>(p, x.add(r0 * k), y.add(r0 * n), b0);
                r0 += 8;
            }
            if $r > 4 && t - r0 >= 4 {
                tile::<4, CV, S>(p, x.add(r0 * k), y.add(r0 * n), b0);
                r0 += 4;
            }
            if t - r0 >= 2 {
                tile::<2, CV, S>(p, x.add(r0 * k), y.add(r0 * n), b0);
                r0 += 2;
            }
            if t - r0 >= 1 {
                tile::<1, CV, S>(p, x.add(r0 * k), y.add(r0 * n), b0);
            }
        }

        $(#[$attr])*
        unsafe fn run_slots<const S: usize>(
            p: &$crate::kernels::colsimd::Packed,
            x: *const f32,
            t: usize,
            y: *mut f32,
        ) {
            let panel = $crate::kernels::colsimd::PANEL_ROWS;
            let mut r0 = 0;
            while r0 < t {
                let pr = panel.min(t - r0);
                let (xp, yp) = (x.add(r0 * p.k), y.add(r0 * p.n));
                let mut b = 0;
                while p.nblocks - b >= $cv {
                    rows::<$cv, S>(p, xp, pr, yp, b);
                    b += $cv;
                }
                while b < p.nblocks {
                    rows::<1, S>(p, xp, pr, yp, b);
                    b += 1;
                }
                r0 += pr;
            }
        }

        /// `y[t, n] = x[t, k] · W + bias`, row-major and contiguous.
        ///
        /// # Safety
        /// `p` was packed with `LANES`, `x` holds `t * p.k` floats, `y` holds
        /// `t * p.n` floats, and the CPU has the target features.
        $(#[$attr])*
        pub(crate) unsafe fn run(
            p: &$crate::kernels::colsimd::Packed,
            x: *const f32,
            t: usize,
            y: *mut f32,
        ) {
            match p.slots {
                4 => run_slots::<4>(p, x, t, y),
                8 => run_slots::<8>(p, x, t, y),
                _ => run_slots::<0>(p, x, t, y),
            }
        }
    };
}
pub(crate) use colsimd_kernel;

/// Array-backed backends for the shared kernel: checked by the tests on any CPU.
/// `emu8` / `emu16` mirror the full-permute AVX2 / AVX-512 kernels, `emu8_lane`
/// the in-lane AVX2 one (`vpermilps`: 4-input sub-chunks broadcast to each
/// 128-bit lane).
#[cfg(test)]
pub(crate) mod emu {
    macro_rules! emu_backend {
        ($name:ident, $lanes:literal, $subw:literal) => {
            pub(crate) mod $name {
                pub(crate) const LANES: usize = $lanes;
                const SUBW: usize = $subw;
                const XSUB: usize = LANES / SUBW;
                type VF = [f32; LANES];
                type VI = [u32; LANES];
                unsafe fn vzero() -> VF {
                    [0.0; LANES]
                }
                unsafe fn vzero_i() -> VI {
                    [0; LANES]
                }
                unsafe fn vload(p: *const f32) -> VF {
                    assert_eq!(p as usize % (LANES * 4), 0, "misaligned weight load");
                    std::ptr::read(p.cast())
                }
                unsafe fn vloadx(p: *const f32) -> VF {
                    vloadx_part(p, SUBW)
                }
                unsafe fn vloadx_part(p: *const f32, n: usize) -> VF {
                    let mut sub = [0.0; SUBW];
                    std::ptr::copy_nonoverlapping(p, sub.as_mut_ptr(), n);
                    std::array::from_fn(|l| sub[l % SUBW])
                }
                unsafe fn vloadi(p: *const f32) -> VI {
                    vload(p).map(f32::to_bits)
                }
                unsafe fn vperm(idx: VI, x: VF) -> VF {
                    std::array::from_fn(|l| x[l / SUBW * SUBW + idx[l] as usize % SUBW])
                }
                unsafe fn vsrl4(idx: VI) -> VI {
                    idx.map(|i| i >> 4)
                }
                unsafe fn vfma(a: VF, b: VF, c: VF) -> VF {
                    std::array::from_fn(|l| a[l].mul_add(b[l], c[l]))
                }
                unsafe fn vstoreu(p: *mut f32, v: VF) {
                    std::ptr::write_unaligned(p.cast(), v)
                }
                unsafe fn vstoreu_part(p: *mut f32, v: VF, n: usize) {
                    std::ptr::copy_nonoverlapping(v.as_ptr(), p, n)
                }
                super::super::colsimd_kernel!(; R = 3, CV = 2);
            }
        };
    }
    emu_backend!(emu8, 8, 8);
    emu_backend!(emu8_lane, 8, 4);
    emu_backend!(emu16, 16, 16);
}
