"""The rebalance as one convex problem, compiled once per shape and re-solved per portfolio.

Variables (weights, fractions of the portfolio's NAV; ``n`` instruments, ``S`` sleeves):
``W`` (n x S) post-trade weights per sleeve, with ``w = W 1`` the portfolio's weights;
``b, s >= 0`` (n) the buys and sells, ``w - w0 = b - s``; for TAXABLE portfolios ``u >= 0``
(n x J), the weight sold out of each tax piece.

Objective (all terms are shares of NAV)::

    lambda * sum_s [ ||G (W_s - T_s)||^2 + ||d o (W_s - T_s)||^2 ]             tracking variance
  + a' (b + s) + c' (b + s)^{3/2}                                             spread+commission, impact
  + sum_ij slope_ij u_ij                                                      tax of the sells

with ``G = L' X'`` from the factor model (``X`` exposures, ``F = L L'`` the annualised factor
covariance) and ``d`` the annualised specific volatilities, so the bracket is each sleeve's ex-ante
tracking variance against its own targets ``T_s`` (annualised) and ``lambda`` the risk aversion. Sleeves trade as one book: a
share moved from one sleeve to another costs nothing, only the net trade ``b - s`` is charged.

Hard constraints, in named groups (``CONSTRAINT_GROUPS``; a group can be left out of a shape):

- ``budget``: the cash after trading and paying the costs stays above the buffer,
  ``sum(b - s) + costs <= cash0 - cash_min``, and the cash after trading is at most
  ``cash_max`` (``sum(b - s) >= cash0 - cash_max``; costs only lower it further);
- ``bounds``: ``lower <= w <= upper``; long-only books also keep every sleeve ``W >= 0``; of several
  sleeves, none adds to an instrument it does not target (``W_s <= W0_s`` where ``T_s = 0``): without
  this, splitting a holding over sleeves would look like diversification (the sum of the sleeves'
  tracking variances falls when a position is shared) when the portfolio's risk is unchanged;
- ``liquidity``: ``b <= buy_cap``, ``s <= sell_cap`` (a share of average daily volume; a
  wash-sale window sets ``buy_cap = 0``);
- ``sector_caps`` / ``class_caps``: ``A w <= cap`` for sector and asset-class membership ``A``;
- ``turnover``: ``sum(b + s) <= turnover_max``;
- ``tracking_error``: ``sqrt(||G (w - t)||^2 + ||d o (w - t)||^2) <= te_max`` (annualised);
- ``sector_risk``: the same norm over one sector's active weights ``<= budget_g``.

Every product of a Parameter and a Variable keeps one side parameter-free (the targets enter
as ``G T`` and ``d o T``, precomputed), so the problem is DPP: cvxpy compiles it once and a
re-solve only refreshes parameter values (``problem.is_dpp()`` is tested).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import cvxpy as cp
import numpy as np

import transforms  # noqa: F401  (sets the Polars engine)
from optimizers.costs import IMPACT_EXPONENT, impact_cost, linear_cost, tax_cost

CONSTRAINT_GROUPS = ("budget", "bounds", "liquidity", "sector_caps", "class_caps", "turnover", "tracking_error", "sector_risk")
SOLVERS = ("CLARABEL", "SCS")  # default, then the fallback
SOLVER_OPTIONS = {"SCS": {"eps": 1e-7, "max_iters": 20000}}
OK_STATUSES = (cp.OPTIMAL, cp.OPTIMAL_INACCURATE)
# Steps of 1.25-1.5x above 64 (padding costs solve time: 125 padded instruments against 109
# real ones took 10% longer; a book of 130 padded to 256 compiled for 3-4 s); each size in use
# is one more compile per run.
PAD_SIZES = (8, 16, 32, 64, 96, 128, 160, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096)
CAP_CEILING = 10.0  # a cap this large never binds on weights; keeps the solver's scaling sane
FEASIBILITY_TOLERANCE = 1e-6  # hard constraints are checked to this (weights)


@dataclass
class RebalanceInputs:
    """One portfolio's rebalance problem (n instruments, S sleeves, k factors).

    Weights are fractions of NAV; variances and volatilities are annualised. Arrays:
    ``current``/``target`` (n, S); ``exposures`` (n, k); ``factor_covariance`` (k, k);
    ``specific_variance``, ``lower``, ``upper``, ``buy_cap``, ``sell_cap``, ``linear``,
    ``impact`` (n); ``sector``/``asset_class`` (n) integer labels with ``sector_cap`` /
    ``class_cap`` per label (``None``: no cap); ``tax_lengths``/``tax_slopes`` (n, J) or ``None``
    for a portfolio that pays no tax. ``cash`` is the current cash weight.
    """

    instrument_ids: tuple[str, ...]
    sleeves: tuple[str, ...]
    current: np.ndarray
    target: np.ndarray
    cash: float
    exposures: np.ndarray
    factor_covariance: np.ndarray
    specific_variance: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    buy_cap: np.ndarray
    sell_cap: np.ndarray
    linear: np.ndarray
    impact: np.ndarray
    sector: np.ndarray
    asset_class: np.ndarray
    sector_cap: np.ndarray | None = None
    class_cap: np.ndarray | None = None
    sector_risk_budget: np.ndarray | None = None
    turnover_max: float | None = None
    cash_min: float = 0.0
    cash_max: float = 1.0
    te_max: float | None = None
    tax_lengths: np.ndarray | None = None
    tax_slopes: np.ndarray | None = None
    risk_aversion: float = 25.0
    long_only: bool = True

    @property
    def n(self) -> int:
        return len(self.instrument_ids)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first array of the wrong shape or with a non-finite value."""
        n, S, k = self.n, len(self.sleeves), self.exposures.shape[1] if self.exposures.ndim == 2 else -1
        expected = {"current": (n, S), "target": (n, S), "exposures": (n, k), "factor_covariance": (k, k)}
        expected |= {name: (n,) for name in ("specific_variance", "lower", "upper", "buy_cap", "sell_cap", "linear", "impact",
                                            "sector", "asset_class")}
        if self.tax_lengths is not None or self.tax_slopes is not None:
            if self.tax_lengths is None or self.tax_slopes is None:
                raise ValueError("tax_lengths and tax_slopes come together")
            expected |= {"tax_lengths": (n, self.tax_lengths.shape[1]), "tax_slopes": (n, self.tax_lengths.shape[1])}
        for name, shape in expected.items():
            value = np.asarray(getattr(self, name))
            if value.shape != shape:
                raise ValueError(f"rebalance inputs: {name} has shape {value.shape}, expected {shape}")
            if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
                raise ValueError(f"rebalance inputs: {name} has a NaN or infinite value")
        if np.any(self.lower > self.upper + FEASIBILITY_TOLERANCE):
            raise ValueError("rebalance inputs: a lower bound is above its upper bound")
        if self.tax_slopes is not None and np.any((self.tax_slopes < 0).any(axis=1) & (self.buy_cap > 0)):
            # A tax saving on a sale, with a purchase allowed, would let the optimiser sell the
            # loss and buy it back: a wash sale, whose loss is disallowed.
            raise ValueError("rebalance inputs: an instrument with a negative tax slope (a harvestable loss) must have buy_cap 0")
        for name in ("buy_cap", "sell_cap", "linear", "impact", "specific_variance"):
            if np.any(getattr(self, name) < 0):
                raise ValueError(f"rebalance inputs: {name} must be >= 0")
        for name, labels, caps in (("sector_cap", self.sector, self.sector_cap), ("class_cap", self.asset_class, self.class_cap),
                                   ("sector_risk_budget", self.sector, self.sector_risk_budget)):
            if caps is not None and (labels.size and labels.max() >= len(caps)):
                raise ValueError(f"rebalance inputs: {name} has {len(caps)} entries but labels go to {labels.max()}")
        if not (np.isfinite(self.risk_aversion) and self.risk_aversion > 0):
            raise ValueError(f"rebalance inputs: risk_aversion must be > 0, got {self.risk_aversion}")
        if not np.isfinite(self.cash) or not 0 <= self.cash_min <= self.cash_max:
            raise ValueError("rebalance inputs: cash must be finite and 0 <= cash_min <= cash_max")


@dataclass(frozen=True)
class Shape:
    """What fixes a compiled problem: its sizes and which constraint groups it has."""

    n: int
    k: int
    sleeves: int
    sectors: int
    classes: int
    segments: int  # tax pieces per instrument; 0: no tax
    groups: frozenset[str]
    long_only: bool


def padded(size: int) -> int:
    """The next of ``PAD_SIZES`` at or above ``size``: problems of nearby sizes share one compile."""
    for p in PAD_SIZES:
        if size <= p:
            return p
    return size


def shape_of(inputs: RebalanceInputs, disabled: Iterable[str] = ()) -> Shape:
    """The compiled shape that fits ``inputs`` (``n`` and the label counts padded up)."""
    groups = {"budget", "bounds", "liquidity"}
    if inputs.sector_cap is not None:
        groups.add("sector_caps")
    if inputs.class_cap is not None:
        groups.add("class_caps")
    if inputs.turnover_max is not None:
        groups.add("turnover")
    if inputs.te_max is not None:
        groups.add("tracking_error")
    if inputs.sector_risk_budget is not None:
        groups.add("sector_risk")
    groups -= set(disabled)
    sectors = max(len(inputs.sector_cap) if inputs.sector_cap is not None else 0,
                  len(inputs.sector_risk_budget) if inputs.sector_risk_budget is not None else 0)
    classes = len(inputs.class_cap) if inputs.class_cap is not None else 0
    segments = 0 if inputs.tax_lengths is None else inputs.tax_lengths.shape[1]
    return Shape(padded(inputs.n), inputs.exposures.shape[1], len(inputs.sleeves), padded(sectors) if sectors else 0,
                 padded(classes) if classes else 0, segments, frozenset(groups), inputs.long_only)


@dataclass
class Solution:
    """One solve: ``status`` (cvxpy's, or ``infeasible`` / ``error``), the ``solver`` that gave it,
    the post-trade ``weights`` (n, S) and their total ``w`` (n), the trade ``z = w - w0`` (n), the
    cost terms (shares of NAV, recomputed in numpy from ``z``), the tracking error after
    (annualised, against the total target), and on infeasibility the constraint groups whose
    removal alone makes the problem feasible (``relaxed_by``)."""

    status: str
    solver: str | None
    weights: np.ndarray | None = None
    costs: dict[str, float] = field(default_factory=dict)
    tracking_error: float | None = None
    objective: float | None = None
    relaxed_by: tuple[str, ...] = ()
    message: str = ""
    diagnosis_seconds: float = 0.0  # of the solve call, spent on ``diagnose_infeasibility``

    @property
    def ok(self) -> bool:
        return self.status in OK_STATUSES and self.weights is not None


def sleeve_upper(x: RebalanceInputs) -> np.ndarray:
    """(n, S) upper bound of each sleeve's weight: with several sleeves, its current weight where
    it has no target, else no bound beyond the portfolio's (``CAP_CEILING``)."""
    if x.current.shape[1] == 1:
        return np.full(x.current.shape, CAP_CEILING)
    return np.where(np.abs(x.target) > 0, CAP_CEILING, np.maximum(x.current, 0.0) if x.long_only else np.abs(x.current))


def factor_loadings(exposures: np.ndarray, factor_covariance: np.ndarray) -> np.ndarray:
    """``G = L' X'`` (k x n) with ``F = L L'``: then ``w' X F X' w = ||G w||^2``. A factor covariance
    that is only positive semi-definite is factored through its eigen-decomposition."""
    F = (factor_covariance + factor_covariance.T) / 2
    try:
        L = np.linalg.cholesky(F)
    except np.linalg.LinAlgError:
        vals, vecs = np.linalg.eigh(F)
        L = vecs * np.sqrt(np.clip(vals, 0.0, None))
    return L.T @ exposures.T


def tracking_error(active: np.ndarray, G: np.ndarray, specific_variance: np.ndarray) -> float:
    """``sqrt(||G a||^2 + sum_i specific_variance_i a_i^2)``: ex-ante tracking error of active
    weights ``a`` under the factor model (annualised when the model is)."""
    return float(np.sqrt(np.sum((G @ active) ** 2) + np.sum(specific_variance * active**2)))


def _pad(values: np.ndarray, n: int, fill: float = 0.0) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    out = np.full((n,) + values.shape[1:], fill)
    out[: values.shape[0]] = values
    return out


def _membership(labels: np.ndarray, groups: int, n: int) -> np.ndarray:
    A = np.zeros((groups, n))
    rows = np.asarray(labels, dtype=np.int64)
    keep = rows >= 0
    A[rows[keep], np.flatnonzero(keep)] = 1.0
    return A


class RebalanceProblem:
    """The cvxpy problem for one ``Shape``, with a Parameter for every per-portfolio number.

    Build it once (``RebalanceProblem(shape)``) and call ``solve(inputs)`` for each portfolio of
    that shape: cvxpy compiles on the first solve and reuses the compilation after.
    """

    def __init__(self, shape: Shape):
        self.shape = shape
        n, k, S, J = shape.n, shape.k, shape.sleeves, shape.segments
        P = cp.Parameter
        self.p = p = {
            "w0": P(n), "G": P((k, n)), "GT": P((k, S)), "D": P((n, S), nonneg=True), "DT": P((n, S)),
            "linear": P(n, nonneg=True), "impact": P(n, nonneg=True),
        }
        W = cp.Variable((n, S), name="W")
        b = cp.Variable(n, nonneg=True, name="buys")
        s = cp.Variable(n, nonneg=True, name="sells")
        w = cp.sum(W, axis=1) if S > 1 else W[:, 0]
        self.W, self.b, self.s = W, b, s
        traded = b + s
        self.linear_term = p["linear"] @ traded
        self.impact_term = p["impact"] @ cp.power(traded, IMPACT_EXPONENT)
        risk = cp.sum_squares(p["G"] @ W - p["GT"]) + cp.sum_squares(cp.multiply(p["D"], W) - p["DT"])
        objective = risk + self.linear_term + self.impact_term
        constraints = [w - p["w0"] == b - s]
        g = shape.groups
        if shape.long_only:
            constraints.append(W >= 0)
        if "budget" in g:
            p["cash_room"], p["cash_excess"] = P(), P()
            constraints.append(cp.sum(b) - cp.sum(s) + self.linear_term + self.impact_term <= p["cash_room"])
            constraints.append(cp.sum(b) - cp.sum(s) >= p["cash_excess"])
        if "bounds" in g:
            p["lower"], p["upper"], p["sleeve_upper"] = P(n), P(n), P((n, S))
            constraints += [w >= p["lower"], w <= p["upper"], W <= p["sleeve_upper"]]
        if "liquidity" in g:
            p["buy_cap"], p["sell_cap"] = P(n, nonneg=True), P(n, nonneg=True)
            constraints += [b <= p["buy_cap"], s <= p["sell_cap"]]
        if "sector_caps" in g:
            p["A_sector"], p["sector_cap"] = P((shape.sectors, n)), P(shape.sectors)
            constraints.append(p["A_sector"] @ w <= p["sector_cap"])
        if "class_caps" in g:
            p["A_class"], p["class_cap"] = P((shape.classes, n)), P(shape.classes)
            constraints.append(p["A_class"] @ w <= p["class_cap"])
        if "turnover" in g:
            p["turnover_max"] = P(nonneg=True)
            constraints.append(cp.sum(traded) <= p["turnover_max"])
        if "tracking_error" in g:
            p["Gt"], p["d"], p["dt"], p["te_max"] = P(k), P(n, nonneg=True), P(n), P(nonneg=True)
            constraints.append(cp.norm(cp.hstack([p["G"] @ w - p["Gt"], cp.multiply(p["d"], w) - p["dt"]])) <= p["te_max"])
        if "sector_risk" in g:
            p.setdefault("d", P(n, nonneg=True))
            p["sector_risk_budget"] = P(shape.sectors, nonneg=True)
            for j in range(shape.sectors):
                Gj, dj, cj = P((k, n)), P(n, nonneg=True), P(k + n)
                p[f"G_{j}"], p[f"d_{j}"], p[f"c_{j}"] = Gj, dj, cj
                active = cp.hstack([Gj @ w, cp.multiply(dj, w)]) - cj
                constraints.append(cp.norm(active) <= p["sector_risk_budget"][j])
        if J:
            p["tax_lengths"], p["tax_slopes"] = P((n, J), nonneg=True), P((n, J))
            u = cp.Variable((n, J), nonneg=True, name="sold_by_piece")
            self.u = u
            self.tax_term = cp.sum(cp.multiply(p["tax_slopes"], u))
            objective = objective + self.tax_term
            constraints += [cp.sum(u, axis=1) == s, u <= p["tax_lengths"]]
        self.problem = cp.Problem(cp.Minimize(objective), constraints)
        # One cvxpy problem per solver over the same variables and parameters: cvxpy keeps one
        # compilation per problem, so a fallback solve on a shared problem would make the next
        # default-solver solve of this shape compile again.
        self._by_solver = {SOLVERS[0]: self.problem}

    def for_solver(self, solver: str) -> cp.Problem:
        """This shape's cvxpy problem compiled (or to be compiled) for ``solver``."""
        problem = self._by_solver.get(solver)
        if problem is None:
            problem = self._by_solver[solver] = cp.Problem(self.problem.objective, self.problem.constraints)
        return problem

    def compile(self, solver: str = SOLVERS[0]) -> None:
        """Compile for ``solver`` now, without solving: parameters with no value get zeros
        (the compiled form does not depend on the values), so the first real solve of the shape
        only loads its numbers."""
        for param in self.problem.parameters():
            if param.value is None:
                param.value = np.zeros(param.shape)
        self.for_solver(solver).get_problem_data(solver, enforce_dpp=True)

    def set_values(self, x: RebalanceInputs, G: np.ndarray) -> None:
        """Load one portfolio's numbers (padded to the shape) into the Parameters."""
        sh, p = self.shape, self.p
        n = sh.n
        w0 = _pad(x.current, n).sum(axis=1)
        T = _pad(x.target, n)
        # The risk aversion scales the factor and specific loadings (and, to match, the risk
        # limits): a Parameter multiplying the risk term would make the problem non-DPP.
        scale = np.sqrt(x.risk_aversion)
        Gp = np.zeros((sh.k, n))
        Gp[:, : x.n] = scale * G
        d = scale * _pad(np.sqrt(x.specific_variance), n)
        p["w0"].value = w0
        p["G"].value = Gp
        p["GT"].value = Gp @ T
        p["D"].value = np.repeat(d[:, None], sh.sleeves, axis=1)
        p["DT"].value = d[:, None] * T
        p["linear"].value = _pad(x.linear, n)
        p["impact"].value = _pad(x.impact, n)
        g = sh.groups
        if "budget" in g:
            p["cash_room"].value = x.cash - x.cash_min
            p["cash_excess"].value = x.cash - x.cash_max
        if "bounds" in g:
            p["lower"].value = _pad(np.maximum(x.lower, -CAP_CEILING), n)
            p["upper"].value = _pad(np.minimum(x.upper, CAP_CEILING), n)
            p["sleeve_upper"].value = _pad(sleeve_upper(x), n)
        if "liquidity" in g:
            p["buy_cap"].value = _pad(np.minimum(x.buy_cap, CAP_CEILING), n)
            p["sell_cap"].value = _pad(np.minimum(x.sell_cap, CAP_CEILING), n)
        if "sector_caps" in g:
            p["A_sector"].value = _membership(_pad(x.sector, n, -1), sh.sectors, n)
            p["sector_cap"].value = _pad(np.minimum(x.sector_cap, CAP_CEILING), sh.sectors, CAP_CEILING)
        if "class_caps" in g:
            p["A_class"].value = _membership(_pad(x.asset_class, n, -1), sh.classes, n)
            p["class_cap"].value = _pad(np.minimum(x.class_cap, CAP_CEILING), sh.classes, CAP_CEILING)
        if "turnover" in g:
            p["turnover_max"].value = min(x.turnover_max, 2 * CAP_CEILING)
        t = T.sum(axis=1)
        if "tracking_error" in g:
            p["Gt"].value = Gp @ t
            p["d"].value = d
            p["dt"].value = d * t
            p["te_max"].value = scale * x.te_max
        if "sector_risk" in g:
            p["d"].value = d
            budgets = scale * _pad(np.minimum(x.sector_risk_budget, CAP_CEILING), sh.sectors, CAP_CEILING)
            p["sector_risk_budget"].value = budgets
            labels = _pad(x.sector, n, -1)
            for j in range(sh.sectors):
                mask = (labels == j).astype(float)
                Gj, dj = Gp * mask, d * mask
                p[f"G_{j}"].value, p[f"d_{j}"].value = Gj, dj
                p[f"c_{j}"].value = np.concatenate([Gj @ t, dj * t])
        if sh.segments:
            p["tax_lengths"].value = _pad(x.tax_lengths, n)
            p["tax_slopes"].value = _pad(x.tax_slopes, n)

    def solve(self, x: RebalanceInputs, G: np.ndarray, solver: str = "CLARABEL") -> tuple[str, np.ndarray | None, float | None]:
        """Solve for one portfolio: (status, sleeve weights (x.n, S) or None, objective)."""
        self.set_values(x, G)
        problem = self.for_solver(solver)
        problem.solve(solver=solver, **SOLVER_OPTIONS.get(solver, {}))
        status = problem.status
        if status not in OK_STATUSES or self.W.value is None:
            return status, None, None
        return status, np.asarray(self.W.value)[: x.n].copy(), float(problem.value)


class ProblemCache:
    """Compiled problems by shape, so that each shape is built (and compiled) once. With
    ``capacity``, the least recently used shapes beyond it are dropped (a cache kept by a
    long-lived process stays bounded). Every solve sets every parameter of its problem, so a
    problem serves any number of portfolios, and runs, one at a time."""

    def __init__(self, capacity: int | None = None) -> None:
        self.problems: dict[Shape, RebalanceProblem] = {}
        self.capacity = capacity
        self.builds = 0
        self.compile_seconds: dict[Shape, float] = {}  # by ``warm``

    def get(self, shape: Shape) -> RebalanceProblem:
        problem = self.problems.pop(shape, None)
        if problem is None:
            problem = RebalanceProblem(shape)
            self.builds += 1
        self.problems[shape] = problem  # the most recently used last
        while self.capacity is not None and len(self.problems) > self.capacity:
            dropped = next(iter(self.problems))
            del self.problems[dropped]
            self.compile_seconds.pop(dropped, None)
        return problem

    def warm(self, inputs: Iterable[RebalanceInputs], solver: str = SOLVERS[0]) -> int:
        """Build and compile, before any solve, every shape that ``inputs`` need and the cache
        does not hold yet, so that no portfolio's solve pays for a compile. Returns how many
        shapes were compiled (their times are in ``compile_seconds``)."""
        new = {shape_of(x) for x in inputs} - set(self.problems)
        for shape in sorted(new, key=repr):
            started = time.perf_counter()
            self.get(shape).compile(solver)
            self.compile_seconds[shape] = time.perf_counter() - started
        return len(new)


def evaluate(x: RebalanceInputs, weights: np.ndarray, G: np.ndarray | None = None) -> dict[str, float]:
    """The cost terms and tracking error of post-trade sleeve ``weights`` (n, S), in numpy:
    ``linear``, ``impact``, ``tax`` (shares of NAV; see ``optimizers.costs``), ``total_cost``,
    ``turnover`` (``sum |z|``), ``tracking_error`` (annualised, total weights against the total
    target) and ``cash_after`` (cash weight after paying for the trades and their costs)."""
    G = factor_loadings(x.exposures, x.factor_covariance) if G is None else G
    z = weights.sum(axis=1) - x.current.sum(axis=1)
    costs = {"linear": linear_cost(z, x.linear), "impact": impact_cost(z, x.impact)}
    costs["tax"] = tax_cost(-np.minimum(z, 0), x.tax_lengths, x.tax_slopes) if x.tax_lengths is not None else 0.0
    costs["total_cost"] = costs["linear"] + costs["impact"] + costs["tax"]
    costs["turnover"] = float(np.abs(z).sum())
    costs["tracking_error"] = tracking_error(weights.sum(axis=1) - x.target.sum(axis=1), G, x.specific_variance)
    costs["cash_after"] = x.cash - float(z.sum()) - costs["linear"] - costs["impact"]
    return costs


def violations(x: RebalanceInputs, weights: np.ndarray, G: np.ndarray | None = None,
               tolerance: float = FEASIBILITY_TOLERANCE) -> dict[str, float]:
    """Every hard constraint that post-trade sleeve ``weights`` (n, S) break by more than
    ``tolerance``, with the amount (weights, or annualised volatility for the risk groups).
    An empty dict: the trade may be published."""
    G = factor_loadings(x.exposures, x.factor_covariance) if G is None else G
    w = weights.sum(axis=1)
    z = w - x.current.sum(axis=1)
    e = evaluate(x, weights, G)
    out: dict[str, float] = {}

    def record(group: str, amount: float) -> None:
        if amount > tolerance:
            out[group] = max(out.get(group, 0.0), float(amount))

    record("budget", max(x.cash_min - e["cash_after"], x.cash - float(z.sum()) - x.cash_max))
    record("bounds", float(np.max(np.concatenate([x.lower - w, w - x.upper, [0.0]]))))
    if x.long_only:
        record("bounds", float(-weights.min(initial=0.0)))
    record("bounds", float(np.max(weights - sleeve_upper(x), initial=0.0)))
    record("liquidity", float(np.max(np.concatenate([z - x.buy_cap, -z - x.sell_cap, [0.0]]))))
    for group, labels, caps in (("sector_caps", x.sector, x.sector_cap), ("class_caps", x.asset_class, x.class_cap)):
        if caps is not None:
            sums = np.bincount(labels[labels >= 0], weights=w[labels >= 0], minlength=len(caps))
            record(group, float(np.max(sums - caps, initial=0.0)))
    if x.turnover_max is not None:
        record("turnover", e["turnover"] - x.turnover_max)
    if x.te_max is not None:
        record("tracking_error", e["tracking_error"] - x.te_max)
    if x.sector_risk_budget is not None:
        active = w - x.target.sum(axis=1)
        for j, budget in enumerate(x.sector_risk_budget):
            mask = x.sector == j
            if mask.any():
                record("sector_risk", tracking_error(np.where(mask, active, 0.0), G, x.specific_variance) - budget)
    return out


def solve(x: RebalanceInputs, cache: ProblemCache | None = None, solvers: tuple[str, ...] = SOLVERS,
          diagnose: bool = True) -> Solution:
    """Solve one portfolio's rebalance: the default solver, then each fallback (a solution that
    breaks a hard constraint by more than ``FEASIBILITY_TOLERANCE`` counts as none); when no solver
    finds a solution and ``diagnose`` is set, re-solve with each constraint group relaxed in
    turn (``relaxed``: through the Parameters, no new compile) and report the groups whose
    relaxation alone makes the problem feasible."""
    x.validate()
    cache = cache or ProblemCache()
    G = factor_loadings(x.exposures, x.factor_covariance)
    problem = cache.get(shape_of(x))
    messages: list[str] = []
    for solver in solvers:
        try:
            status, weights, value = problem.solve(x, G, solver)
        except cp.SolverError as exc:
            messages.append(f"{solver}: {exc}")
            continue
        if weights is not None:
            broken = violations(x, weights, G)
            if broken:  # an inaccurate solution that breaks a hard constraint is no solution
                messages.append(f"{solver}: {status} but breaks {', '.join(sorted(broken))}")
                continue
            e = evaluate(x, weights, G)
            costs = {key: e[key] for key in ("linear", "impact", "tax", "total_cost", "turnover", "cash_after")}
            return Solution(status, solver, weights, costs, e["tracking_error"], value)
        messages.append(f"{solver}: {status}")
        if status == cp.INFEASIBLE:  # a certificate of infeasibility: another solver cannot do better
            break
    relaxed: tuple[str, ...] = ()
    started = time.perf_counter()
    if diagnose:
        relaxed = diagnose_infeasibility(x, cache, G, solvers[0])
    message = "; ".join(messages)
    note = message + (f"; feasible without: {', '.join(relaxed)}" if relaxed else "; no single constraint group relaxes it")
    # infeasible if a solver said so; "inaccurate" when solutions came back but broke a constraint
    failed = "infeasible" if "infeasible" in message.replace("optimal_inaccurate", "") else "inaccurate" if "breaks" in message else "error"
    return Solution(failed, None, relaxed_by=relaxed, message=note, diagnosis_seconds=time.perf_counter() - started)


def relaxed(x: RebalanceInputs, group: str) -> RebalanceInputs:
    """A copy of ``x`` whose constraint ``group`` can no longer bind, with the same shape (so
    the diagnosis re-solves the compiled problem instead of compiling one per group)."""
    big = CAP_CEILING
    n = x.n
    changes: dict = {
        "budget": {"cash_min": 0.0, "cash": x.cash + big, "cash_max": x.cash + 2 * big},
        "bounds": {"lower": np.full(n, -big), "upper": np.full(n, big)},
        "liquidity": {"buy_cap": np.full(n, big), "sell_cap": np.full(n, big)},
        "sector_caps": {"sector_cap": None if x.sector_cap is None else np.full_like(x.sector_cap, big)},
        "class_caps": {"class_cap": None if x.class_cap is None else np.full_like(x.class_cap, big)},
        "turnover": {"turnover_max": None if x.turnover_max is None else 2 * big},
        "tracking_error": {"te_max": None if x.te_max is None else big},
        "sector_risk": {"sector_risk_budget": None if x.sector_risk_budget is None else np.full_like(x.sector_risk_budget, big)},
    }[group]
    return replace(x, **changes)


def diagnose_infeasibility(x: RebalanceInputs, cache: ProblemCache, G: np.ndarray, solver: str = "CLARABEL") -> tuple[str, ...]:
    """The constraint groups of ``x``'s shape whose relaxation alone makes the problem solvable.
    Each group is relaxed through its Parameters (``relaxed``): no new compile."""
    found = []
    problem = cache.get(shape_of(x))
    for group in sorted(shape_of(x).groups):
        try:
            status, weights, _ = problem.solve(relaxed(x, group), G, solver)
        except cp.SolverError:
            continue
        if weights is not None:
            found.append(group)
    return tuple(found)
