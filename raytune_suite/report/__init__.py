"""What the user sees of a search: the leaderboard, the console progress, the HTML report.

Modules here read the experiment's plain records (its folder, Ray's results, MLflow);
nothing in engine/ or experiment/ imports them.
"""

from raytune_suite.report.leaderboard import leaderboard, pareto_table

__all__ = ["leaderboard", "pareto_table"]
