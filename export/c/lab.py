"""C for lab-grade readings: the card's calibration, conformal intervals and lab flags after the network.

The generated ``model.c`` gets ``<prefix>_read_rgb888`` / ``_read_gray8`` (a frame -> a
``struct <prefix>_reading`` with calibrated values, interval bounds, the network's readings and a
flag bit mask) and ``<prefix>_postprocess`` (network readings -> the same struct, for firmware that
runs the network itself). The arithmetic is ``edgereg.lab.readout.LabReadout``'s, in double precision, with
the constants taken from a LabReadout built for each stored level (TTA "none": C has no TTA), so the
C and the Python runtime agree to float rounding. Flags are bits in the order of
``edgereg.lab.readout.LAB_FLAGS``.

Without intervals in the card, ``lo``/``hi`` are NaN; without calibration, ``value`` equals ``raw``.
"""

from __future__ import annotations

import math

import numpy as np

from edgereg.core.card import ModelCard
from edgereg.lab.readout import LAB_FLAGS, LabReadout

_FITS = {"linear": 0, "quadratic": 0, "offset": 0, "isotonic": 1}


def _d(value: float) -> str:
    """A C double literal (17 significant digits; INFINITY / -INFINITY / NAN)."""
    value = float(value)
    if math.isnan(value):
        return "NAN"
    if math.isinf(value):
        return "INFINITY" if value > 0 else "-INFINITY"
    return repr(value) if ("e" in repr(value) or "." in repr(value)) else repr(value) + ".0"


def _array(values) -> str:
    return "{" + ", ".join(_d(v) for v in np.asarray(values, dtype=np.float64).reshape(-1)) + "}"


def flag_macros(macro: str) -> list[str]:
    """``#define <MACRO>_FLAG_BELOW_LOB (1u << 0)`` ... in LAB_FLAGS order."""
    return [f"#define {macro}_FLAG_{name.upper()} (1u << {bit})" for bit, name in enumerate(LAB_FLAGS)]


class LabC:
    """Renders the lab post-processing of one card.

    Args:
        card: the model card.
        prefix, macro: the C symbol prefix and its upper-case macro form.
    """

    def __init__(self, card: ModelCard, prefix: str, macro: str) -> None:
        self.card, self.prefix, self.macro = card, prefix, macro
        base = LabReadout(card, tta="none", confidence=None)
        self.levels: list[float] = []
        self.readouts: list[LabReadout] = []
        from edgereg.lab.intervals import parse_intervals, unsupported_reason

        spec = parse_intervals(card.intervals, card.targets)
        if spec is not None:  # levels without finite bounds (too few calibration rows) return ERR_CONFIDENCE
            entry, _ = spec.for_tta("none")
            self.levels = [level for level in spec.levels if unsupported_reason(entry, level) is None]
            self.readouts = [LabReadout(card, tta="none", confidence=level) for level in self.levels]
        self.base = base
        self.flash_bytes = 0

    @property
    def has_intervals(self) -> bool:
        return bool(self.readouts)

    def header(self) -> str:
        """Declarations for model.h."""
        m, p = self.macro, self.prefix
        levels = ", ".join(f"{v:g}" for v in self.levels) or "none"
        lines = [
            f"#define {m}_HAS_INTERVALS {int(self.has_intervals)}",
            f"#define {m}_HAS_CALIBRATION {int(self.base.calibration is not None)}",
            f"#define {m}_N_LEVELS {max(len(self.levels), 1)}",
            f"#define {m}_ERR_CONFIDENCE (-3) /* a confidence level the card has no quantiles for ({levels}) */",
            *flag_macros(m),
            "",
            "/* A lab-grade reading: calibrated values, their conformal interval at the requested confidence,",
            f" * the network's readings and the flags ({m}_FLAG_*). lo/hi are NaN without intervals. */",
            f"struct {p}_reading {{",
            f"    float value[{m}_N_OUTPUTS];",
            f"    float lo[{m}_N_OUTPUTS];",
            f"    float hi[{m}_N_OUTPUTS];",
            f"    float raw[{m}_N_OUTPUTS];",
            "    uint32_t flags;",
            "};",
            "",
            f"extern const float {p}_levels[{m}_N_LEVELS]; /* confidence levels with stored quantiles */",
            "",
            f"int {p}_read_rgb888(const uint8_t *pixels, int width, int height, int stride, float confidence,",
            f"                    struct {p}_reading *out);",
            f"int {p}_read_gray8(const uint8_t *pixels, int width, int height, int stride, float confidence,",
            f"                   struct {p}_reading *out);",
            f"int {p}_postprocess(const float raw[{m}_N_OUTPUTS], const float *scale, float confidence,",
            f"                    struct {p}_reading *out);",
        ]
        return "\n".join(lines)

    def header_doc(self) -> str:
        """The model.h comment block for the lab entry points."""
        m, p = self.macro, self.prefix
        levels = ", ".join(f"{v:g}" for v in self.levels) or "none in this card"
        cal = self.base.calibration
        calibration = f"calibration {cal.id} of {cal.date}" if cal else "no calibration to standards"
        return (f" *   {p}_read_rgb888(pixels, width, height, stride, confidence, out)\n"
                f" *   {p}_read_gray8(pixels, width, height, stride, confidence, out)\n"
                f" *       A frame -> struct {p}_reading: the network's readings (raw), calibrated values\n"
                f" *       ({comment_safe(calibration)}), conformal intervals at `confidence` (one of: {levels};\n"
                f" *       else {m}_ERR_CONFIDENCE) and lab flags, as edgereg's runtime computes them without TTA.\n"
                f" *       Coverage holds only for frames like the export's calibration images.\n"
                f" *\n"
                f" *   {p}_postprocess(raw, scale, confidence, out)\n"
                f" *       The same from network readings in physical units (scale: the crop side per output\n"
                f" *       for coords, NULL for 1).\n")

    def source(self) -> str:
        """Constants and functions for model.c (after the network and the predict helpers).

        Only the tables a card needs are emitted (``-Wall`` rejects unused constants), and the
        functions select their branches with the ``LAB_HAS_*`` macros.
        """
        card, m, p = self.card, self.macro, self.prefix
        n = len(card.targets)
        calibration = self.base.calibration
        isotonic = calibration is not None and any(c.fit == "isotonic" for c in calibration.targets.values())
        limits = self.base.limit_arrays()
        uncalibrated = bool(self.base.uncalibrated.any())
        parts = [f"const float {p}_levels[{m}_N_LEVELS] = {{{', '.join(f'{v!r}f' for v in self.levels) or '0.0f'}}};",
                 f"#define LAB_HAS_INTERVALS {int(self.has_intervals)}",
                 f"#define LAB_HAS_CALIBRATION {int(calibration is not None)}",
                 f"#define LAB_HAS_ISOTONIC {int(isotonic)}",
                 f"#define LAB_HAS_LIMITS {int(limits is not None)}",
                 f"#define LAB_ANY_UNCALIBRATED {int(uncalibrated)}"]
        if self.has_intervals:
            parts.append(self._interval_tables(n))
        if calibration is not None:
            parts.append(self._calibration_tables(n, isotonic))
        if limits is not None:
            parts.append(self._limit_tables(n, limits))
        if uncalibrated:
            flags = ", ".join(str(int(v)) for v in self.base.uncalibrated)
            parts.append(f"static const int lab_uncalibrated[{n}] = {{{flags}}};")
            self.flash_bytes += 4 * n
        parts.append(_FUNCTIONS.replace("@M_", f"{m}_").replace("@P_", f"{p}_")
                     .replace("@KIND", str(card.target_kind.lab_code)))
        return "\n".join(parts)

    def _interval_tables(self, n: int) -> str:
        kernel = self.readouts[0].kernel
        targets = kernel.entry.targets
        max_bins = max(len(t.edges) for t in targets) + 1
        q = np.full((len(self.levels), n, max_bins, 2), np.inf)  # (levels, T, bins, lo/hi)
        for i, readout in enumerate(self.readouts):
            for j, target in enumerate(readout.kernel.entry.targets):
                pairs = np.asarray(target.quantiles[readout.level], dtype=np.float64)  # (bins of j, 2)
                q[i, j, :len(pairs)] = pairs
        edges = np.zeros((n, max(max_bins - 1, 1)))
        for j, target in enumerate(targets):
            edges[j, :len(target.edges)] = target.edges
        x_lo = np.where(np.isfinite(kernel.x_lo), kernel.x_lo, -np.finfo(np.float64).max)
        x_hi = np.where(np.isfinite(kernel.x_hi), kernel.x_hi, np.finfo(np.float64).max)
        self.flash_bytes += 8 * (q.size + edges.size + 4 * n + 4 * n) + 4 * n
        rows_q = ",\n    ".join("{" + ", ".join("{" + ", ".join(_array(q[i, j, k]) for k in range(max_bins)) + "}"
                                                 for j in range(n)) + "}" for i in range(len(self.levels)))
        return "\n".join([
            f"#define LAB_MAX_BINS {max_bins}",
            f"static const double lab_q[{len(self.levels)}][{n}][LAB_MAX_BINS][2] = {{\n    {rows_q}\n}};",
            f"static const double lab_edges[{n}][{edges.shape[1]}] = {{{', '.join(_array(e) for e in edges)}}};",
            f"static const int lab_n_edges[{n}] = {{{', '.join(str(len(t.edges)) for t in targets)}}};",
            f"static const double lab_coef[4][{n}] = {{{', '.join(_array(row) for row in kernel.coef)}}};",
            f"static const double lab_x_lo[{n}] = {_array(x_lo)};",
            f"static const double lab_x_hi[{n}] = {_array(x_hi)};",
            f"static const double lab_floor[{n}] = {_array(kernel.floor)};",
            f"static const double lab_wide_sigma[{n}] = {_array(kernel.wide_sigma)};",
        ])

    def _calibration_tables(self, n: int, isotonic: bool) -> str:
        calibration = self.base.calibration
        fits, coef, cov = [], np.zeros((n, 3)), np.zeros((n, 3, 3))
        t = np.zeros((n, max(len(self.levels), 1)))
        ref = np.zeros((n, 2))
        knots, iso_se = [], np.zeros(n)
        for j, name in enumerate(self.card.targets):
            curve = calibration.targets.get(name)
            if curve is None:
                fits.append(-1)
                knots.append(((), ()))
                continue
            fits.append(_FITS[curve.fit])
            coef[j] = curve.coef
            cov[j] = np.asarray(curve.cov)
            for i, level in enumerate(self.levels):
                t[j, i] = curve.t_quantile(level)
            ref[j] = curve.reference_range
            knots.append(curve.knots or ((), ()))
            iso_se[j] = curve.residual_sd / math.sqrt(max(curve.n_eff, 1.0))
        self.flash_bytes += 8 * (coef.size + cov.size + t.size + ref.size) + 4 * n
        lines = [
            f"static const int lab_fit[{n}] = {{{', '.join(map(str, fits))}}}; /* -1 none, 0 polynomial, 1 isotonic */",
            f"static const double lab_cal_coef[{n}][3] = {{{', '.join(_array(c) for c in coef)}}};",
            f"static const double lab_ref_range[{n}][2] = {{{', '.join(_array(r) for r in ref)}}};",
        ]
        if self.has_intervals:  # the curve's own uncertainty widens the intervals
            covariance = ", ".join("{" + ", ".join(_array(r) for r in c) + "}" for c in cov)
            lines += [f"static const double lab_cal_cov[{n}][3][3] = {{{covariance}}};",
                      f"static const double lab_cal_t[{n}][{t.shape[1]}] = {{{', '.join(_array(r) for r in t)}}};"]
        if isotonic:
            most = max(len(xs) for xs, _ in knots)
            kx, ky = np.zeros((n, most)), np.zeros((n, most))
            for j, (xs, ys) in enumerate(knots):
                kx[j, :len(xs)], ky[j, :len(ys)] = xs, ys
            self.flash_bytes += 8 * (kx.size + ky.size + n) + 4 * n
            lines += [f"static const int lab_n_knots[{n}] = {{{', '.join(str(len(xs)) for xs, _ in knots)}}};",
                      f"static const double lab_knot_x[{n}][{most}] = {{{', '.join(_array(r) for r in kx)}}};",
                      f"static const double lab_knot_y[{n}][{most}] = {{{', '.join(_array(r) for r in ky)}}};"]
            if self.has_intervals:
                lines.append(f"static const double lab_iso_se[{n}] = {_array(iso_se)};")
        return "\n".join(lines)

    def _limit_tables(self, n: int, limits: dict) -> str:
        self.flash_bytes += 8 * 5 * n
        return "\n".join(f"static const double lab_{key}[{n}] = {_array(limits[key])};"
                         for key in ("lob", "lod", "loq", "range_lo", "range_hi"))


def comment_safe(text: str) -> str:
    """``text`` made safe inside a C block comment (no ``*/``)."""
    return text.replace("*/", "* /")


# The post-processing, written once for every model; the tables above parameterize it.
_FUNCTIONS = r"""
#if LAB_HAS_CALIBRATION
static double lab_curve(int t, double x)
{
#if LAB_HAS_ISOTONIC
    if (lab_fit[t] == 1) { /* isotonic: linear between knots, flat beyond the ends */
        const int k = lab_n_knots[t];
        if (x <= lab_knot_x[t][0]) {
            return lab_knot_y[t][0];
        }
        if (x >= lab_knot_x[t][k - 1]) {
            return lab_knot_y[t][k - 1];
        }
        int i = 1;
        while (i < k - 1 && x > lab_knot_x[t][i]) {
            ++i;
        }
        const double x0 = lab_knot_x[t][i - 1], x1 = lab_knot_x[t][i];
        return lab_knot_y[t][i - 1] + (lab_knot_y[t][i] - lab_knot_y[t][i - 1]) * (x - x0) / (x1 - x0);
    }
#endif
    return lab_cal_coef[t][0] + lab_cal_coef[t][1] * x + lab_cal_coef[t][2] * x * x;
}
#endif

#if LAB_HAS_CALIBRATION && LAB_HAS_INTERVALS
static double lab_curve_se(int t, double x)
{
#if LAB_HAS_ISOTONIC
    if (lab_fit[t] == 1) {
        return lab_iso_se[t];
    }
#endif
    const double basis[3] = {1.0, x, x * x};
    double variance = 0.0;
    for (int i = 0; i < 3; ++i) {
        for (int j = 0; j < 3; ++j) {
            variance += basis[i] * lab_cal_cov[t][i][j] * basis[j];
        }
    }
    return variance > 0.0 ? sqrt(variance) : 0.0;
}
#endif

static int lab_level(float confidence)
{
#if LAB_HAS_INTERVALS
    for (int i = 0; i < @M_N_LEVELS; ++i) {
        if (fabs((double)confidence - (double)@P_levels[i]) < 1e-6) {
            return i;
        }
    }
    return -1;
#else
    (void)confidence;
    return 0;
#endif
}

int @P_postprocess(const float raw[@M_N_OUTPUTS], const float *scale, float confidence, struct @P_reading *out)
{
    if (raw == NULL || out == NULL) {
        return @M_ERR_NULL;
    }
    const int level = lab_level(confidence);
    if (level < 0) {
        return @M_ERR_CONFIDENCE;
    }
    uint32_t flags = 0u;
    for (int t = 0; t < @M_N_OUTPUTS; ++t) {
        const double x = (double)raw[t];
        double lo = NAN, hi = NAN;
#if LAB_HAS_INTERVALS
        double u = x < lab_x_lo[t] ? lab_x_lo[t] : x;
        u = u > lab_x_hi[t] ? lab_x_hi[t] : u;
        double sigma = lab_coef[0][t] + u * (lab_coef[1][t] + lab_coef[2][t] * u);
        sigma = (sigma != sigma || sigma < lab_floor[t]) ? lab_floor[t] : sigma; /* NaN reading: the floor */
        if (sigma > lab_wide_sigma[t]) {
            flags |= @M_FLAG_INTERVAL_WIDE;
        }
        if (scale != NULL) {
            sigma *= (double)scale[t];
        }
        int bin = 0;
        while (bin < lab_n_edges[t] && x >= lab_edges[t][bin]) {
            ++bin;
        }
        const double below = lab_q[level][t][bin][0] * sigma, above = lab_q[level][t][bin][1] * sigma;
        lo = x - below;
        hi = x + above;
#if @KIND == 1 /* angle: wrap to [0, 360); a width of 360 or more is the whole circle */
        if (!(below + above < 360.0)) {
            lo = 0.0;
            hi = 360.0;
        } else {
            lo = fmod(fmod(lo, 360.0) + 360.0, 360.0);
            hi = fmod(fmod(hi, 360.0) + 360.0, 360.0);
        }
#elif @KIND == 2 /* distribution: probabilities */
        lo = lo < 0.0 ? 0.0 : (lo > 1.0 ? 1.0 : lo);
        hi = hi < 0.0 ? 0.0 : (hi > 1.0 ? 1.0 : hi);
#endif
#else
        (void)scale;
#endif
        double value = x;
#if LAB_HAS_CALIBRATION
        if (lab_fit[t] >= 0) {
            value = lab_curve(t, x);
#if LAB_HAS_INTERVALS
            double low = lab_curve(t, lo), high = lab_curve(t, hi);
            if (low > high) {
                const double swap = low;
                low = high;
                high = swap;
            }
            if (lab_fit[t] == 0 && lab_cal_coef[t][2] != 0.0) {
                const double vertex = -lab_cal_coef[t][1] / (2.0 * lab_cal_coef[t][2]);
                if (lo < vertex && vertex < hi) {
                    const double at = lab_curve(t, vertex);
                    low = at < low ? at : low;
                    high = at > high ? at : high;
                }
            }
            const double spread = lab_cal_t[t][level] * lab_curve_se(t, x);
            lo = value - sqrt((value - low) * (value - low) + spread * spread);
            hi = value + sqrt((high - value) * (high - value) + spread * spread);
#endif
            if (value < lab_ref_range[t][0] || value > lab_ref_range[t][1]) {
                flags |= @M_FLAG_EXTRAPOLATED;
            }
        }
#endif
#if LAB_HAS_LIMITS
        if (value < lab_lob[t]) {
            flags |= @M_FLAG_BELOW_LOB;
        }
        if (value < lab_lod[t]) {
            flags |= @M_FLAG_BELOW_LOD;
        }
        if (value < lab_loq[t]) {
            flags |= @M_FLAG_BELOW_LOQ;
        }
        if (value < lab_range_lo[t]) {
            flags |= @M_FLAG_BELOW_RANGE;
        }
        if (value > lab_range_hi[t]) {
            flags |= @M_FLAG_ABOVE_RANGE;
        }
#endif
#if LAB_ANY_UNCALIBRATED
        if (lab_uncalibrated[t]) {
            flags |= @M_FLAG_UNCALIBRATED;
        }
#endif
        out->raw[t] = raw[t];
        out->value[t] = (float)value;
        out->lo[t] = (float)lo;
        out->hi[t] = (float)hi;
    }
    out->flags = flags;
    return @M_OK;
}
"""


__all__ = ["LabC", "flag_macros"]
