"""The cvxpy rebalancing optimiser and its helpers (costs, problem, inputs, tax, rounding,
rebalance, netting): pure computation, no Dagster, no paths. See optimizers/README.md."""
