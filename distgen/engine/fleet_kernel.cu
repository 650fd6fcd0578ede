/* The fleet kernel in C: one source for the host (C compiler) and the GPU (NVRTC via CuPy).
 *
 * A transcription of distgen/engine/kernel.py (fleet_kernel), distgen/workload/serving.py
 * (serve_step, enqueue and the decode heap) and distgen/core/rng.py (uniform01, normal,
 * portable_log) with the same operations in the same order, so that both builds give the
 * Numba kernel's bits:
 *   - float64 wherever the Numba kernel computes in float64 (rate multipliers are read as
 *     float32 and widened, as NumPy does); int64 counters, int32 where the state arrays are;
 *   - no fused multiply-add: compile with -ffp-contract=off (host) / --fmad=false (NVRTC);
 *   - no math-library transcendental: the logarithm is built from the exponent bits and
 *     arithmetic (dg_log); sqrt, ceil and floor are exact IEEE operations everywhere;
 *   - min / max as Numba evaluates them: max(a, b) = b > a ? b : a, min(a, b) = b < a ? b : a;
 *     float -> int conversions truncate toward zero, like Numba's int();
 *   - power is added into int64 milliwatt sums (atomics on the GPU: exact in any order).
 * Everything the kernel reads or writes is passed in one DgFleet struct of pointers and
 * scalars (distgen/engine/kernel_abi.py builds it; every field is 8 bytes, so the layout is
 * the same for the host and the device). Keep this file C99 and CUDA C++ at once: no
 * includes, no library calls.
 */

typedef long long i64;
typedef unsigned long long u64;
typedef int i32;

#if defined(__CUDACC__)
#define DG_INLINE __device__ __forceinline__
#define DG_RESTRICT __restrict__
#define DG_HOST_RESTRICT
#define DG_SQRT(x) sqrt(x)
#define DG_CEIL(x) ceil(x)
#define DG_FLOOR(x) floor(x)
#define DG_BITS(x) ((u64)__double_as_longlong(x))
#define DG_DOUBLE(b) __longlong_as_double((i64)(b))
#define DG_ADD_I64(p, v) atomicAdd((unsigned long long *)(p), (unsigned long long)(v))
#define DG_EXPORT extern "C"
#else
#define DG_INLINE static inline __attribute__((always_inline))
#define DG_RESTRICT __restrict__
#define DG_HOST_RESTRICT __restrict__
#define DG_SQRT(x) __builtin_sqrt(x)
#define DG_CEIL(x) __builtin_ceil(x)
#define DG_FLOOR(x) __builtin_floor(x)
typedef union { double d; u64 u; } dg_pun;
DG_INLINE u64 dg_bits(double x) { dg_pun p; p.d = x; return p.u; }
DG_INLINE double dg_double(u64 b) { dg_pun p; p.u = b; return p.d; }
#define DG_BITS(x) dg_bits(x)
#define DG_DOUBLE(b) dg_double(b)
#define DG_ADD_I64(p, v) (*(p) += (v))
#ifdef __cplusplus
#define DG_EXPORT extern "C"
#else
#define DG_EXPORT
#endif
#endif

/* the kernel's inputs and state (records.py), every field 8 bytes; order = kernel_abi.FIELDS */
typedef struct DgFleet {
    /* Chunk */
    i64 step0, n_steps;
    double interval_s;
    i64 mode, count_from_step;
    /* Deployments */
    i64 n_deployments;
    const u64 *state_key, *request_key;
    const i32 *model;
    const i64 *target;
    /* ModelTables */
    const double *serving, *idle_w, *d_w, *sensor;
    const double *busy_edges;
    i64 n_busy_edges;
    const double *prefill_edges;
    i64 n_prefill_edges;
    const double *residual_of_z;
    i64 n_states, n_z;
    double z_min, z_inv_step;
    const double *phi, *innovation, *clamp_w, *power_limit;
    const double *tok_in;
    i64 n_tok_in;
    const double *tok_out;
    i64 n_tok_out;
    const double *envelope_max;
    i64 n_envelope;
    /* SyntheticInputs */
    const double *base_rps;
    const float *rate_mult;
    i64 n_intervals, rate_k0, steps_per_interval, step_offset;
    const double *gamma_q;
    i64 n_gamma, input_tokens, output_tokens;
    double cached_share;
    /* ReplayInputs */
    const i64 *rep_offsets;
    const double *rep_arrival_s;
    const i32 *rep_input_tokens, *rep_cached_tokens, *rep_output_tokens;
    /* ServingState */
    double *iterations, *fin, *ctx;
    i32 *heap_n;
    double *ctx_base;
    i32 *pre_left, *pre_prompt, *pre_out, *pre_head, *pre_n;
    i64 *pre_total;
    double *pre_attn, *wait_t;
    i32 *wait_prompt, *wait_cached, *wait_out, *wait_head, *wait_n;
    i64 *dropped;
    i64 seq_capacity, queue_capacity;
    /* CarriedState */
    i64 *state;
    double *latent_z, *over_limit_j, *shares_prev, *op_time, *next_arrival;
    i64 *n_arrived, *replay_ptr;
    /* Outputs */
    i64 *target_mw;
    i64 target_stride;
    i32 *deployment_mw;
    i64 deployment_stride;
    double *stats;
    /* rng.NORMAL_TABLE */
    const double *normal_table;
} DgFleet;

/* records.py constants */
#define DG_MODE_SYNTHETIC 0
#define DG_N_STATS 6
#define DG_S_ARRIVED 0
#define DG_S_RUNNING_SUM 1
#define DG_S_PREFILL_TOKENS 2
#define DG_S_DECODE_TOKENS 3
#define DG_S_BUSY_S 4
#define DG_S_OUTSIDE_ENVELOPE 5
#define DG_ENV_RUNNING 0
#define DG_ENV_DECODE_BATCH 1
#define DG_ENV_PREFILL_TOKENS 2
#define DG_ENV_CONTEXT_PER_SEQ 3
#define DG_N_SERVING 7

/* Numba's min / max (first argument unless the second compares strictly) */
DG_INLINE double dg_maxf(double a, double b) { return b > a ? b : a; }
DG_INLINE double dg_minf(double a, double b) { return b < a ? b : a; }
DG_INLINE i64 dg_maxi(i64 a, i64 b) { return b > a ? b : a; }
DG_INLINE i64 dg_mini(i64 a, i64 b) { return b < a ? b : a; }

/* ------------------------------------------------------------------ rng.py */

#define DG_GOLDEN 0x9E3779B97F4A7C15ULL
#define DG_INV52 2.220446049250313e-16 /* 2**-52 */
#define DG_TABLE_CELLS 4096
#define DG_TABLE_EDGE 64

DG_INLINE u64 dg_mix64(u64 x) {
    x ^= x >> 30;
    x *= 0xBF58476D1CE4E5B9ULL;
    x ^= x >> 27;
    x *= 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
}

DG_INLINE double dg_uniform01(u64 key, u64 counter) {
    u64 h = dg_mix64(key + counter * DG_GOLDEN);
    return ((double)(h >> 12) + 0.5) * DG_INV52;
}

/* rng.portable_log: log(m 2^e) = e ln2 + 2 atanh(s), s = (m - 1) / (m + 1), for positive
 * finite x; frexp from the exponent bits (subnormals scaled by 2^54 first) */
DG_INLINE double dg_log(double x) {
    i64 e = 0;
    u64 b = DG_BITS(x);
    if (((b >> 52) & 0x7FF) == 0) {
        x *= 18014398509481984.0; /* 2**54 */
        b = DG_BITS(x);
        e = -54;
    }
    e += (i64)((b >> 52) & 0x7FF) - 1022;
    double m = DG_DOUBLE((b & 0x800FFFFFFFFFFFFFULL) | (1022ULL << 52)); /* in [0.5, 1) */
    if (m < 0.7071067811865476) {
        m *= 2.0;
        e -= 1;
    }
    double ef = (double)e;
    double s = (m - 1.0) / (m + 1.0);
    double z = s * s;
    double poly = 0.043478260869565216; /* 1/23 */
    poly = poly * z + 0.047619047619047616;
    poly = poly * z + 0.05263157894736842;
    poly = poly * z + 0.058823529411764705;
    poly = poly * z + 0.06666666666666667;
    poly = poly * z + 0.07692307692307693;
    poly = poly * z + 0.09090909090909091;
    poly = poly * z + 0.1111111111111111;
    poly = poly * z + 0.14285714285714285;
    poly = poly * z + 0.2;
    poly = poly * z + 0.3333333333333333;
    return ef * 0.6931471803691238 + (ef * 1.9082149292705877e-10 + (s + s * (z * poly)) * 2.0);
}

/* rng.inverse_normal_cdf_nb (Acklam) */
DG_INLINE double dg_inverse_normal_cdf(double u) {
    if (0.02425 <= u && u <= 0.97575) {
        double q = u - 0.5;
        double r = q * q;
        return ((((((-3.969683028665376e+01 * r + 2.209460984245205e+02) * r
                    - 2.759285104469687e+02) * r + 1.38357751867269e+02) * r
                  - 3.066479806614716e+01) * r + 2.506628277459239e+00) * q)
               / (((((-5.447609879822406e+01 * r + 1.615858368580409e+02) * r
                     - 1.556989798598866e+02) * r + 6.680131188771972e+01) * r
                   - 1.328068155288572e+01) * r + 1.0);
    }
    double t = DG_SQRT(-2.0 * dg_log(dg_minf(u, 1.0 - u)));
    double tail = (((((-7.784894002430293e-03 * t - 3.223964580411365e-01) * t
                      - 2.400758277161838e+00) * t - 2.549732539343734e+00) * t
                    + 4.374664141464968e+00) * t + 2.938163982698783e+00)
                  / ((((7.784695709041462e-03 * t + 3.224671290700398e-01) * t
                       + 2.445134137142996e+00) * t + 3.754408661907416e+00) * t + 1.0);
    return u < 0.02425 ? tail : -tail;
}

/* rng.normal_nb: table body, Acklam tails */
DG_INLINE double dg_normal(const double *DG_RESTRICT table, u64 key, u64 counter) {
    double u = dg_uniform01(key, counter);
    double x = u * (double)DG_TABLE_CELLS;
    i64 i = dg_mini((i64)x, DG_TABLE_CELLS - 1);
    if (i < DG_TABLE_EDGE || i >= DG_TABLE_CELLS - DG_TABLE_EDGE) return dg_inverse_normal_cdf(u);
    return table[i] + (x - (double)i) * (table[i + 1] - table[i]);
}

/* ------------------------------------------------------------------ serving.py */

/* counts bounded by the queue capacities are int32, as stored */
typedef struct DgQueue {
    double iterations;
    i32 heap_n;
    double ctx_base;
    i32 pre_head, pre_n;
    i64 pre_total;
    double pre_attn;
    i32 wait_head, wait_n;
} DgQueue;

typedef struct DgWork {
    double prefill_busy_s, decode_busy_s, decode_batch;
    i64 prefill_tokens;
    double decode_tokens, iterations, context_tokens, attention_tokens;
} DgWork;

typedef struct DgRates {
    double base_s, prefill_s, decode_s, context_s, attention_s, budget;
    i32 max_seqs;
} DgRates;

/* one deployment's rows of the serving state */
typedef struct DgRows {
    double *fin, *ctx;
    i32 *pre_left, *pre_prompt, *pre_out;
    double *wait_t;
    i32 *wait_prompt, *wait_cached, *wait_out;
    i32 seq_cap, wait_cap;
} DgRows;

DG_INLINE double dg_positions(i64 first, i64 count) {
    return (double)count * ((double)first + 0.5 * (double)(count - 1));
}

DG_INLINE i32 dg_heap_push(double *fin, double *ctx, i32 n, double value, double offset) {
    i32 i = n;
    while (i > 0) {
        i32 parent = (i - 1) >> 1;
        if (fin[parent] <= value) break;
        fin[i] = fin[parent];
        ctx[i] = ctx[parent];
        i = parent;
    }
    fin[i] = value;
    ctx[i] = offset;
    return n + 1;
}

DG_INLINE i32 dg_heap_pop(double *fin, double *ctx, i32 n) {
    n -= 1;
    double last = fin[n], last_ctx = ctx[n];
    i32 i = 0;
    for (;;) {
        i32 child = 2 * i + 1;
        if (child >= n) break;
        if (child + 1 < n && fin[child + 1] < fin[child]) child += 1;
        if (fin[child] >= last) break;
        fin[i] = fin[child];
        ctx[i] = ctx[child];
        i = child;
    }
    if (n > 0) {
        fin[i] = last;
        ctx[i] = last_ctx;
    }
    return n;
}

/* serving.enqueue: returns 1 when the queue is full (the request is dropped) */
DG_INLINE i64 dg_enqueue(const DgRows *r, DgQueue *q, double arrival_s, i64 prompt_tokens,
                         i64 cached_tokens, i64 output_tokens) {
    i32 cap = r->wait_cap;
    if (q->wait_n >= cap) return 1;
    i32 slot = q->wait_head + q->wait_n;
    if (slot >= cap) slot -= cap;
    r->wait_t[slot] = arrival_s;
    r->wait_prompt[slot] = (i32)prompt_tokens;
    r->wait_cached[slot] = (i32)cached_tokens;
    r->wait_out[slot] = (i32)output_tokens;
    q->wait_n += 1;
    return 0;
}

/* serving.serve_step */
DG_INLINE DgWork dg_serve_step(const DgRows *r, DgQueue *q, const DgRates *rt,
                               double step_start_s, double interval_s) {
    double base_s = rt->base_s, prefill_s = rt->prefill_s, decode_s = rt->decode_s;
    double context_s = rt->context_s, attention_s = rt->attention_s, budget = rt->budget;
    i32 max_seqs = rt->max_seqs;
    double iters = q->iterations;
    i32 heap_n = q->heap_n;
    double ctx_base = q->ctx_base;
    i32 pre_head = q->pre_head, pre_n = q->pre_n;
    i64 pre_total = q->pre_total;
    double pre_attn = q->pre_attn;
    i32 wait_head = q->wait_head, wait_n = q->wait_n;
    i32 seq_cap = r->seq_cap, wait_cap = r->wait_cap;
    double *fin = r->fin, *ctx = r->ctx;
    double t = 0.0, busy_pre = 0.0, busy_dec = 0.0, batch_time = 0.0, ctx_read = 0.0;
    double dec_tokens = 0.0, its_total = 0.0, attn_done = 0.0;
    i64 pre_tokens = 0;
    for (;;) {
        while (wait_n > 0 && pre_n + heap_n < max_seqs
               && r->wait_t[wait_head] <= step_start_s + t) {
            i32 slot = pre_head + pre_n;
            if (slot >= seq_cap) slot -= seq_cap;
            i64 prompt = r->wait_prompt[wait_head];
            i64 need = dg_maxi(prompt - (i64)r->wait_cached[wait_head], 1);
            r->pre_left[slot] = (i32)need;
            r->pre_prompt[slot] = (i32)prompt;
            r->pre_out[slot] = r->wait_out[wait_head];
            pre_total += need;
            pre_attn += dg_positions(prompt - need, need);
            pre_n += 1;
            wait_head += 1;
            if (wait_head == wait_cap) wait_head = 0;
            wait_n -= 1;
        }
        if (t >= interval_s) break;
        double seg_end = interval_s;
        if (wait_n > 0 && pre_n + heap_n < max_seqs)
            seg_end = dg_minf(dg_maxf(r->wait_t[wait_head] - step_start_s, t), interval_s);
        double avail = seg_end - t;
        double ctx_now = ctx_base + (double)heap_n * iters;
        double per_it = base_s + decode_s * (double)heap_n + context_s * ctx_now;
        if (pre_n > 0) {
            double room = dg_maxf(budget - (double)heap_n, 1.0);
            i64 it_need = (i64)DG_CEIL((double)pre_total / room);
            double time_need = (double)it_need * per_it + prefill_s * (double)pre_total
                               + attention_s * pre_attn;
            i64 done;
            double its, used;
            if (time_need <= avail) {
                done = pre_total;
                its = (double)it_need;
                used = time_need;
            } else {
                double frac = avail / time_need;
                done = (i64)DG_FLOOR((double)pre_total * frac);
                its = (double)it_need * frac;
                used = avail;
            }
            busy_pre += used;
            its_total += its;
            dec_tokens += (double)heap_n * its;
            ctx_read += its * ctx_now + 0.5 * (double)heap_n * its * its;
            pre_tokens += done;
            double iters_end = iters + its;
            while (heap_n > 0 && fin[0] <= iters_end) {
                dec_tokens -= iters_end - dg_maxf(fin[0], iters);
                ctx_base -= ctx[0];
                heap_n = dg_heap_pop(fin, ctx, heap_n);
            }
            i64 left = done;
            pre_total -= done;
            double block_attn = 0.0;
            while (pre_n > 0 && (i64)r->pre_left[pre_head] <= left) {
                i64 need = r->pre_left[pre_head];
                left -= need;
                block_attn += dg_positions((i64)r->pre_prompt[pre_head] - need, need);
                i64 out = r->pre_out[pre_head];
                if (out > 1) {
                    double offset = (double)r->pre_prompt[pre_head] - iters_end;
                    heap_n = dg_heap_push(fin, ctx, heap_n, iters_end + (double)(out - 1),
                                          offset);
                    ctx_base += offset;
                }
                pre_head += 1;
                if (pre_head == seq_cap) pre_head = 0;
                pre_n -= 1;
            }
            if (pre_n > 0 && left > 0) {
                block_attn += dg_positions((i64)r->pre_prompt[pre_head]
                                           - (i64)r->pre_left[pre_head], left);
                r->pre_left[pre_head] = (i32)((i64)r->pre_left[pre_head] - left);
            }
            attn_done += block_attn;
            pre_attn = pre_n == 0 ? 0.0 : pre_attn - block_attn;
            iters = iters_end;
            t += used;
        } else if (heap_n > 0) {
            double its = avail / per_it;
            double iters_end = iters + its;
            i32 n0 = heap_n;
            double last = iters;
            i64 n_gone = 0;
            double sum_fin = 0.0, used;
            while (heap_n > 0 && fin[0] <= iters_end) {
                last = fin[0];
                n_gone += 1;
                sum_fin += last;
                ctx_base -= ctx[0];
                heap_n = dg_heap_pop(fin, ctx, heap_n);
            }
            if (heap_n == 0) {
                iters_end = last;
                its = last - iters;
                used = its * per_it;
            } else {
                used = avail;
            }
            double gone = (double)n_gone * iters_end - sum_fin;
            busy_dec += used;
            batch_time += (double)n0 * used;
            its_total += its;
            dec_tokens += (double)n0 * its - gone;
            ctx_read += its * ctx_now + 0.5 * (double)n0 * its * its;
            iters += its;
            t += used;
        } else {
            t = seg_end;
        }
    }
    if (heap_n == 0) ctx_base = 0.0;
    DgWork w;
    w.prefill_busy_s = busy_pre;
    w.decode_busy_s = busy_dec;
    w.decode_batch = busy_dec > 0.0 ? batch_time / busy_dec : 0.0;
    w.prefill_tokens = pre_tokens;
    w.decode_tokens = dec_tokens;
    w.iterations = its_total;
    w.context_tokens = ctx_read;
    w.attention_tokens = attn_done;
    q->iterations = iters;
    q->heap_n = heap_n;
    q->ctx_base = ctx_base;
    q->pre_head = pre_head;
    q->pre_n = pre_n;
    q->pre_total = pre_total;
    q->pre_attn = pre_attn;
    q->wait_head = wait_head;
    q->wait_n = wait_n;
    return w;
}

/* ------------------------------------------------------------------ kernel.py */

DG_INLINE i64 dg_quantile_tokens(const double *DG_RESTRICT q, i64 n, double u) {
    double pos = u * (double)(n - 1);
    i64 i = dg_mini((i64)pos, n - 2);
    return dg_maxi((i64)(q[i] + (pos - (double)i) * (q[i + 1] - q[i]) + 0.5), 1);
}

DG_INLINE double dg_gap(const double *DG_RESTRICT gamma_q, i64 n, double u) {
    if (n == 0) return -dg_log(u);
    double pos = u * (double)(n - 1);
    i64 i = dg_mini((i64)pos, n - 2);
    return gamma_q[i] + (pos - (double)i) * (gamma_q[i + 1] - gamma_q[i]);
}

DG_INLINE i64 dg_bin(const double *DG_RESTRICT edges, i64 n, double x) {
    i64 b = 0;
    while (b < n && x >= edges[b]) b += 1;
    return b;
}

/* deployment d's rows of the serving state (recomputed where used: on a GPU, pointers kept
 * live across the step loop would cost registers) */
DG_INLINE DgRows dg_rows(const DgFleet *f, i64 d) {
    DgRows r;
    r.seq_cap = (i32)f->seq_capacity;
    r.wait_cap = (i32)f->queue_capacity;
    r.fin = f->fin + d * r.seq_cap;
    r.ctx = f->ctx + d * r.seq_cap;
    r.pre_left = f->pre_left + d * r.seq_cap;
    r.pre_prompt = f->pre_prompt + d * r.seq_cap;
    r.pre_out = f->pre_out + d * r.seq_cap;
    r.wait_t = f->wait_t + d * r.wait_cap;
    r.wait_prompt = f->wait_prompt + d * r.wait_cap;
    r.wait_cached = f->wait_cached + d * r.wait_cap;
    r.wait_out = f->wait_out + d * r.wait_cap;
    return r;
}

DG_INLINE DgRates dg_rates(const DgFleet *f, i64 m) {
    const double *sv = f->serving + m * DG_N_SERVING;
    DgRates r;
    r.base_s = sv[0];
    r.prefill_s = sv[1];
    r.decode_s = sv[2];
    r.context_s = sv[3];
    r.attention_s = sv[4];
    r.budget = sv[5];
    r.max_seqs = (i32)sv[6];
    return r;
}

/* kernel.fleet_kernel for deployment d. Only what a step carries to the next lives in locals;
 * parameters are read from the parameter block where they are used (cached loads). */
DG_INLINE void dg_deployment(const DgFleet *DG_HOST_RESTRICT f, i64 d) {
    const double dt = f->interval_s;
    const int synthetic = f->mode == DG_MODE_SYNTHETIC;
    const i64 m = f->model[d];

    DgQueue q;
    q.iterations = f->iterations[d];
    q.heap_n = f->heap_n[d];
    q.ctx_base = f->ctx_base[d];
    q.pre_head = f->pre_head[d];
    q.pre_n = f->pre_n[d];
    q.pre_total = f->pre_total[d];
    q.pre_attn = f->pre_attn[d];
    q.wait_head = f->wait_head[d];
    q.wait_n = f->wait_n[d];

    i64 s_prev = f->state[d];
    double zl = f->latent_z[d];
    const double *shares = f->shares_prev + d * 8;
    double a1 = shares[0], b1 = shares[1], c1 = shares[2], e1 = shares[3];
    double a2 = shares[4], b2 = shares[5], c2 = shares[6], e2 = shares[7];
    double over = f->over_limit_j[d];
    double op = f->op_time[d], next_arr = f->next_arrival[d];
    i64 arrived = f->n_arrived[d], ptr = f->replay_ptr[d];
    i64 dropped = 0, n_new = 0, n_outside = 0;
    double sum_running = 0.0, sum_prefill = 0.0, sum_decode = 0.0, sum_busy = 0.0;
    if (synthetic && next_arr < 0.0)
        next_arr = dg_gap(f->gamma_q, f->n_gamma, dg_uniform01(f->request_key[d], 0));
    const i64 spi = f->steps_per_interval;
    i64 col = dg_maxi(f->step0 - f->step_offset, 0) / spi - f->rate_k0;
    i64 next_boundary = f->step_offset + (col + f->rate_k0 + 1) * spi;

    for (i64 j = 0; j < f->n_steps; j++) {
        const i64 k = f->step0 + j;
        const double t0 = (double)k * dt;
        const int counted = k >= f->count_from_step;
        DgRows rows = dg_rows(f, d);
        /* arrivals of this step, at their time inside it */
        if (synthetic) {
            if (k >= next_boundary) {
                col += 1;
                next_boundary += spi;
            }
            double rate = f->base_rps[d] * (double)f->rate_mult[d * f->n_intervals + col];
            double op_end = op + rate * dt;
            while (op_end >= next_arr) {
                const u64 rkey = f->request_key[d];
                i64 n_in = f->input_tokens > 0 ? f->input_tokens
                    : dg_quantile_tokens(f->tok_in + m * f->n_tok_in, f->n_tok_in,
                                         dg_uniform01(rkey, (u64)(3 * arrived + 1)));
                i64 n_out = f->output_tokens > 0 ? f->output_tokens
                    : dg_quantile_tokens(f->tok_out + m * f->n_tok_out, f->n_tok_out,
                                         dg_uniform01(rkey, (u64)(3 * arrived + 2)));
                i64 n_cached = (i64)(f->cached_share * (double)n_in);
                i64 lost = dg_enqueue(&rows, &q, t0 + (next_arr - op) / rate, n_in, n_cached,
                                      n_out);
                arrived += 1;
                if (counted) {
                    dropped += lost;
                    n_new += 1;
                }
                next_arr += dg_gap(f->gamma_q, f->n_gamma,
                                   dg_uniform01(rkey, (u64)(3 * arrived)));
            }
            op = op_end;
        } else {
            const double end_s = t0 + dt;
            const i64 rep_end = f->rep_offsets[d + 1];
            while (ptr < rep_end && f->rep_arrival_s[ptr] < end_s) {
                i64 lost = dg_enqueue(&rows, &q, f->rep_arrival_s[ptr], f->rep_input_tokens[ptr],
                                      f->rep_cached_tokens[ptr], f->rep_output_tokens[ptr]);
                ptr += 1;
                if (counted) {
                    dropped += lost;
                    n_new += 1;
                }
            }
        }
        /* the serving model's work in this step */
        const DgRates rates = dg_rates(f, m);
        DgWork w = dg_serve_step(&rows, &q, &rates, t0, dt);
        double a0 = rates.base_s * w.iterations / dt;
        double b0 = rates.decode_s * w.decode_tokens / dt;
        double c0 = rates.context_s * w.context_tokens / dt;
        double e0 = (rates.prefill_s * (double)w.prefill_tokens
                     + rates.attention_s * w.attention_tokens) / dt;
        /* the level, through the sensor kernel, and the state of the step */
        const double h1 = f->sensor[m * 2 + 0], h2 = f->sensor[m * 2 + 1];
        const double h0 = 1.0 - h1 - h2;
        double sa = h0 * a0 + h1 * a1 + h2 * a2;
        double sb = h0 * b0 + h1 * b1 + h2 * b2;
        double sc = h0 * c0 + h1 * c1 + h2 * c2;
        double se = h0 * e0 + h1 * e1 + h2 * e2;
        const double *d_w = f->d_w + m * 4;
        double level = f->idle_w[m] + d_w[0] * sa + d_w[1] * sb + d_w[2] * sc + d_w[3] * se;
        const double cap = f->power_limit[m * 2 + 0], budget = f->power_limit[m * 2 + 1];
        double excess = (level - cap) * dt;
        if (excess > 0.0) {
            double allowed = dg_maxf(budget - over, 0.0);
            if (excess > allowed) {
                excess = allowed;
                level = cap + allowed / dt;
            }
            over += excess;
        } else {
            over = dg_maxf(over + excess, 0.0);
        }
        double busy = sa + sb + sc + se;
        double pre_share = busy > 1e-12 ? se / busy : 0.0;
        i64 s = dg_bin(f->busy_edges, f->n_busy_edges, busy) * (f->n_prefill_edges + 1)
                + dg_bin(f->prefill_edges, f->n_prefill_edges, pre_share);
        double eps = dg_normal(f->normal_table, f->state_key[d], (u64)k);
        if (s == s_prev) {
            const i64 ms = m * f->n_states + s;
            zl = f->phi[ms] * zl + f->innovation[ms] * eps;
        } else {
            zl = eps;
            s_prev = s;
        }
        const i64 n_z = f->n_z;
        double pos = dg_minf(dg_maxf((zl - f->z_min) * f->z_inv_step, 0.0),
                             (double)n_z - 1.000001);
        i64 i = (i64)pos;
        const double *res = f->residual_of_z + (m * f->n_states + s) * n_z;
        double r0 = res[i];
        double p = level + r0 + (pos - (double)i) * (res[i + 1] - r0);
        p = dg_minf(dg_maxf(p, f->clamp_w[m * 2 + 0]), f->clamp_w[m * 2 + 1]);
        i64 mw = (i64)(p * 1000.0 + 0.5);
        DG_ADD_I64(f->target_mw + f->target[d] * f->target_stride + j, mw);
        if (f->deployment_mw) f->deployment_mw[d * f->deployment_stride + j] = (i32)mw;
        a2 = a1; b2 = b1; c2 = c1; e2 = e1;
        a1 = a0; b1 = b0; c1 = c0; e1 = e0;
        if (counted) {
            i32 running = q.heap_n + q.pre_n;
            sum_running += (double)running;
            sum_prefill += (double)w.prefill_tokens;
            sum_decode += w.decode_tokens;
            sum_busy += w.prefill_busy_s + w.decode_busy_s;
            double per_seq = w.decode_tokens > 0.0 ? w.context_tokens / w.decode_tokens : 0.0;
            const double *env = f->envelope_max + m * f->n_envelope;
            if ((double)running > env[DG_ENV_RUNNING] || w.decode_batch > env[DG_ENV_DECODE_BATCH]
                || (double)w.prefill_tokens > env[DG_ENV_PREFILL_TOKENS]
                || per_seq > env[DG_ENV_CONTEXT_PER_SEQ])
                n_outside += 1;
        }
    }

    f->iterations[d] = q.iterations;
    f->heap_n[d] = (i32)q.heap_n;
    f->ctx_base[d] = q.ctx_base;
    f->pre_head[d] = (i32)q.pre_head;
    f->pre_n[d] = (i32)q.pre_n;
    f->pre_total[d] = q.pre_total;
    f->pre_attn[d] = q.pre_attn;
    f->wait_head[d] = (i32)q.wait_head;
    f->wait_n[d] = (i32)q.wait_n;
    f->dropped[d] += dropped;
    f->state[d] = s_prev;
    f->latent_z[d] = zl;
    f->over_limit_j[d] = over;
    double *sh = f->shares_prev + d * 8;
    sh[0] = a1; sh[1] = b1; sh[2] = c1; sh[3] = e1;
    sh[4] = a2; sh[5] = b2; sh[6] = c2; sh[7] = e2;
    f->op_time[d] = op;
    f->next_arrival[d] = next_arr;
    f->n_arrived[d] = arrived;
    f->replay_ptr[d] = ptr;
    double *st = f->stats + d * DG_N_STATS;
    st[DG_S_ARRIVED] += (double)n_new;
    st[DG_S_RUNNING_SUM] += sum_running;
    st[DG_S_PREFILL_TOKENS] += sum_prefill;
    st[DG_S_DECODE_TOKENS] += sum_decode;
    st[DG_S_BUSY_S] += sum_busy;
    st[DG_S_OUTSIDE_ENVELOPE] += (double)n_outside;
}

/* ------------------------------------------------------------------ entry points */

#if defined(__CUDACC__)
/* one thread per deployment */
DG_EXPORT __global__ void dg_fleet_device(const DgFleet *f) {
    i64 d = (i64)blockIdx.x * (i64)blockDim.x + (i64)threadIdx.x;
    if (d < f->n_deployments) dg_deployment(f, d);
}
#else
/* deployments [d_begin, d_end) one after another */
DG_EXPORT void dg_fleet_host(const DgFleet *f, i64 d_begin, i64 d_end) {
    /* a private copy: no store of the kernel can alias it, so the compiler keeps the
     * parameters in registers instead of reloading them after every store */
    const DgFleet p = *f;
    for (i64 d = d_begin; d < d_end; d++) dg_deployment(&p, d);
}

/* sizeof(DgFleet), so the caller can check its copy of the layout */
DG_EXPORT i64 dg_fleet_size(void) { return (i64)sizeof(DgFleet); }
#endif
