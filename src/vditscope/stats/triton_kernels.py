# ruff: noqa: SIM102, SIM108  (nested and branchy ifs keep compile-time switches apart from runtime tests)
"""Triton kernels of the statistics sweep (plain functions; ``triton_stats`` decorates them per mode).

The functions are left undecorated on purpose: whether Triton compiles them or runs them in its
interpreter (TRITON_INTERPRET=1, CPU tensors) is decided at call time, not when this module is imported.
Scores are in log2 units (scale * log2(e) folded in); a hidden key scores MASKED, whose exp2 is exactly 0.
"""

from __future__ import annotations

import triton.language as tl

# Same constant as streaming.MASKED (not imported: kernels read module globals as constexprs).
MASKED_SCORE = tl.constexpr(-1.0e30)


def lse_kernel(
    Q,
    K,
    MASK,
    LSE,
    RMAX,
    VIS,
    sqb,
    sqh,
    sqm,
    sqd,
    skb,
    skh,
    skn,
    skd,
    smb,
    smh,
    smm,
    smn,
    q_heads,
    group,
    num_q,
    num_k,
    dim,
    qk_scale,
    MASK_KIND: tl.constexpr,
    MASK_ROW_BCAST: tl.constexpr,
    IS_CAUSAL: tl.constexpr,
    UPCAST: tl.constexpr,
    QK_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Pass 1: per query row, log2-sum-exp2 of its scores (0 for a row with no visible key), the row
    maximum (MASKED when empty) and the number of visible keys, by an online max / sum over key blocks."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // q_heads).to(tl.int64)
    h = (bh % q_heads).to(tl.int64)
    hk = h // group
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    row_in = rows < num_q
    q = tl.load(
        Q + b * sqb + h * sqh + rows[:, None] * sqm + dims[None, :] * sqd,
        mask=row_in[:, None] & (dims[None, :] < dim),
        other=0.0,
    )
    if UPCAST:
        q = q.to(tl.float32)
    m_i = tl.full([BLOCK_M], MASKED_SCORE, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    vis = tl.zeros([BLOCK_M], tl.int32)
    hi = num_k
    if IS_CAUSAL:
        hi = tl.minimum(num_k, (pid_m + 1) * BLOCK_M)
    for start in range(0, hi, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        col_in = cols < num_k
        kt = tl.load(
            K + b * skb + hk * skh + cols[None, :] * skn + dims[:, None] * skd,
            mask=col_in[None, :] & (dims[:, None] < dim),
            other=0.0,
        )
        if UPCAST:
            kt = kt.to(tl.float32)
        s = tl.dot(q, kt, input_precision=QK_PRECISION) * qk_scale
        if MASK_KIND != 0:
            mbase = MASK + b * smb + h * smh
            if MASK_ROW_BCAST:
                mval = tl.load(mbase + cols * smn, mask=col_in, other=0)[None, :]
            else:
                mval = tl.load(
                    mbase + rows.to(tl.int64)[:, None] * smm + cols[None, :] * smn,
                    mask=row_in[:, None] & col_in[None, :],
                    other=0,
                )
            if MASK_KIND == 1:
                s = tl.where(mval != 0, s, MASKED_SCORE)
            else:
                s = tl.maximum(s + mval, MASKED_SCORE)
        visible = col_in[None, :] & (s > MASKED_SCORE / 2)
        if IS_CAUSAL:
            visible = visible & (cols[None, :] <= rows[:, None])
        s = tl.where(visible, s, MASKED_SCORE)
        vis += tl.sum(visible.to(tl.int32), axis=1)
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        l_i = l_i * tl.exp2(m_i - m_new) + tl.sum(tl.exp2(s - m_new[:, None]), axis=1)
        m_i = m_new
    empty = m_i <= MASKED_SCORE / 2
    lse = tl.where(empty, 0.0, m_i + tl.log2(tl.where(empty, 1.0, l_i)))
    tl.store(LSE + bh * num_q + rows, lse, mask=row_in)
    tl.store(RMAX + bh * num_q + rows, m_i, mask=row_in)
    tl.store(VIS + bh * num_q + rows, vis, mask=row_in)


def stats_kernel(
    Q,
    K,
    V,
    MASK,
    LSE,
    ENT,
    RMAX,
    OUT,
    RECV,
    FRAME,
    TILE,
    TEXT,
    TEXT_RECV,
    POS,
    SPACE,
    sqb,
    sqh,
    sqm,
    sqd,
    skb,
    skh,
    skn,
    skd,
    svb,
    svh,
    svn,
    svd,
    smb,
    smh,
    smm,
    smn,
    sob,
    soh,
    som,
    sod,
    q_heads,
    group,
    num_q,
    num_k,
    dim,
    dim_v,
    qk_scale,
    video_start,
    num_video,
    hw,
    frames,
    text_start,
    text_stop,
    tile_size,
    tiles,
    MASK_KIND: tl.constexpr,
    MASK_ROW_BCAST: tl.constexpr,
    IS_CAUSAL: tl.constexpr,
    UPCAST: tl.constexpr,
    QK_PRECISION: tl.constexpr,
    STAT_PRECISION: tl.constexpr,
    SPLIT_DOT: tl.constexpr,
    WANT_MAX: tl.constexpr,
    WANT_OUT: tl.constexpr,
    LAYOUT: tl.constexpr,
    HAS_TEXT: tl.constexpr,
    SPATIAL: tl.constexpr,
    TILES: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Pass 2: one sweep over the key blocks of one query block with normalized p = exp2(s - lse2):
    entropy, received mass, output rows, and with a layout the mass per key category (frame, text,
    token-map tile; a one-hot matmul) folded into frame x frame and tile x tile maps at the end,
    text mass and text received, same-position mass and the same-frame (hw x hw) spatial sums."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // q_heads).to(tl.int64)
    h = (bh % q_heads).to(tl.int64)
    hk = h // group
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    row_in = rows < num_q
    q = tl.load(
        Q + b * sqb + h * sqh + rows[:, None] * sqm + dims[None, :] * sqd,
        mask=row_in[:, None] & (dims[None, :] < dim),
        other=0.0,
    )
    if UPCAST:
        q = q.to(tl.float32)
    lse = tl.load(LSE + bh * num_q + rows, mask=row_in, other=0.0)
    ent = tl.zeros([BLOCK_M], tl.float32)
    r_max = tl.full([BLOCK_M], MASKED_SCORE, tl.float32)
    dvs = tl.arange(0, BLOCK_DV)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    cats = tl.arange(0, BLOCK_C)
    cat_acc = tl.zeros([BLOCK_M, BLOCK_C], tl.float32)
    pos_acc = tl.zeros([BLOCK_M], tl.float32)
    # query geometry (meaningful for video rows only)
    rel_q = rows - video_start
    q_video = row_in & (rel_q >= 0) & (rel_q < num_video)
    q_frame = tl.where(q_video, rel_q // hw, -1)
    q_pos = tl.where(q_video, rel_q - q_frame * hw, -1)
    q_first = (pid_m * BLOCK_M - video_start) // hw
    q_last = (pid_m * BLOCK_M + BLOCK_M - 1 - video_start) // hw
    block_has_video = (pid_m * BLOCK_M < video_start + num_video) & (pid_m * BLOCK_M + BLOCK_M > video_start)
    hi = num_k
    if IS_CAUSAL:
        hi = tl.minimum(num_k, (pid_m + 1) * BLOCK_M)
    for start in range(0, hi, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        col_in = cols < num_k
        kt = tl.load(
            K + b * skb + hk * skh + cols[None, :] * skn + dims[:, None] * skd,
            mask=col_in[None, :] & (dims[:, None] < dim),
            other=0.0,
        )
        if UPCAST:
            kt = kt.to(tl.float32)
        s = tl.dot(q, kt, input_precision=QK_PRECISION) * qk_scale
        if MASK_KIND != 0:
            mbase = MASK + b * smb + h * smh
            if MASK_ROW_BCAST:
                mval = tl.load(mbase + cols * smn, mask=col_in, other=0)[None, :]
            else:
                mval = tl.load(
                    mbase + rows.to(tl.int64)[:, None] * smm + cols[None, :] * smn,
                    mask=row_in[:, None] & col_in[None, :],
                    other=0,
                )
            if MASK_KIND == 1:
                s = tl.where(mval != 0, s, MASKED_SCORE)
            else:
                s = tl.maximum(s + mval, MASKED_SCORE)
        keep = row_in[:, None] & col_in[None, :]
        if IS_CAUSAL:
            keep = keep & (cols[None, :] <= rows[:, None])
        s = tl.where(keep, s, MASKED_SCORE)
        if WANT_MAX:
            r_max = tl.maximum(r_max, tl.max(s, axis=1))
        logp = s - lse[:, None]
        p = tl.exp2(logp)
        ent += tl.sum(p * logp, axis=1)
        tl.atomic_add(RECV + bh * num_k + cols, tl.sum(p, axis=0), mask=col_in)
        if WANT_OUT:
            v = tl.load(
                V + b * svb + hk * svh + cols[:, None] * svn + dvs[None, :] * svd,
                mask=col_in[:, None] & (dvs[None, :] < dim_v),
                other=0.0,
            )
            if UPCAST:
                acc += tl.dot(p, v.to(tl.float32), input_precision=STAT_PRECISION)
            else:
                acc += tl.dot(p.to(v.dtype), v)
        if LAYOUT:
            rel_k = cols - video_start
            k_video = col_in & (rel_k >= 0) & (rel_k < num_video)
            k_frame = tl.where(k_video, rel_k // hw, -2)
            k_text = col_in & (cols >= text_start) & (cols < text_stop)
            hot = k_video[:, None] & (cats[None, :] == k_frame[:, None])
            if HAS_TEXT:
                hot = hot | (k_text[:, None] & (cats[None, :] == frames))
            if TILES:
                k_tile = tl.where(k_video, rel_k // tile_size, -2)
                hot = hot | (k_video[:, None] & (cats[None, :] == frames + 1 + k_tile[:, None]))
            if SPLIT_DOT == 0:
                cat_acc += tl.dot(p, hot.to(tl.float32), input_precision=STAT_PRECISION)
            else:
                # p = hi + mid + lo in bfloat16 (24 bits in all, fp32's range); the one-hot is exact in
                # bfloat16, so three tensor-core products give fp32 accuracy at a fraction of the cost
                p_hi = p.to(tl.bfloat16)
                rest = p - p_hi.to(tl.float32)
                p_mid = rest.to(tl.bfloat16)
                p_lo = (rest - p_mid.to(tl.float32)).to(tl.bfloat16)
                if SPLIT_DOT == 1:
                    hot_b = hot.to(tl.bfloat16)
                    cat_acc += tl.dot(p_hi, hot_b) + tl.dot(p_mid, hot_b) + tl.dot(p_lo, hot_b)
                else:  # the same split, products in float32 (the interpreter cannot multiply bfloat16)
                    hot_f = hot.to(tl.float32)
                    cat_acc += tl.dot(p_hi.to(tl.float32), hot_f, input_precision="ieee")
                    cat_acc += tl.dot(p_mid.to(tl.float32), hot_f, input_precision="ieee")
                    cat_acc += tl.dot(p_lo.to(tl.float32), hot_f, input_precision="ieee")
            if HAS_TEXT:
                if (start < text_stop) & (start + BLOCK_N > text_start):
                    text_cols = tl.sum(tl.where(q_video[:, None], p, 0.0), axis=0)
                    tl.atomic_add(TEXT_RECV + bh * (text_stop - text_start) + cols - text_start, text_cols, mask=k_text)
            key_has_video = (start < video_start + num_video) & (start + BLOCK_N > video_start)
            if block_has_video & key_has_video:
                k_pos = tl.where(k_video, rel_k - k_frame * hw, -3)
                same_pos = (q_pos[:, None] == k_pos[None, :]) & (q_frame[:, None] != k_frame[None, :])
                pos_acc += tl.sum(tl.where(same_pos, p, 0.0), axis=1)
                if SPATIAL:
                    k_first = (start - video_start) // hw
                    k_last = (start + BLOCK_N - 1 - video_start) // hw
                    if (k_first <= q_last) & (k_last >= q_first):
                        same_frame = q_video[:, None] & k_video[None, :] & (q_frame[:, None] == k_frame[None, :])
                        tl.atomic_add(
                            SPACE + bh.to(tl.int64) * hw * hw + q_pos[:, None] * hw + k_pos[None, :],
                            p,
                            mask=same_frame,
                        )
    tl.store(ENT + bh * num_q + rows, -0.6931471805599453 * ent, mask=row_in)
    if WANT_MAX:
        tl.store(RMAX + bh * num_q + rows, r_max, mask=row_in)
    if WANT_OUT:
        o_ptr = OUT + b * sob + h * soh + rows[:, None] * som + dvs[None, :] * sod
        tl.store(o_ptr, acc.to(OUT.dtype.element_ty), mask=row_in[:, None] & (dvs[None, :] < dim_v))
    if LAYOUT:
        if block_has_video:
            q_hot = q_video[:, None] & (cats[None, :] == q_frame[:, None])
            if TILES:
                q_tile = tl.where(q_video, rel_q // tile_size, -2)
                q_hot = q_hot | (q_video[:, None] & (cats[None, :] == frames + 1 + q_tile[:, None]))
            pair = tl.dot(tl.trans(q_hot.to(tl.float32)), cat_acc, input_precision=STAT_PRECISION)
            r_cat = cats[:, None]
            c_cat = cats[None, :]
            tl.atomic_add(
                FRAME + bh * frames * frames + r_cat * frames + c_cat, pair, mask=(r_cat < frames) & (c_cat < frames)
            )
            if TILES:
                r_t = r_cat - frames - 1
                c_t = c_cat - frames - 1
                in_tiles = (r_t >= 0) & (r_t < tiles) & (c_t >= 0) & (c_t < tiles)
                tl.atomic_add(TILE + bh * tiles * tiles + r_t * tiles + c_t, pair, mask=in_tiles)
            if HAS_TEXT:
                text_rows = tl.sum(tl.where(q_video[:, None] & (c_cat == frames), cat_acc, 0.0))
                tl.atomic_add(TEXT + bh, text_rows)
            tl.atomic_add(POS + bh, tl.sum(tl.where(q_video, pos_acc, 0.0)))
