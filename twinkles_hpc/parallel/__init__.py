"""The run engine: task graph, rank-0 scheduler and workers, journal, lock, signals, trace."""
