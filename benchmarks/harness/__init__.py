"""What every benchmark command shares: processes (``procs``), the orchestrator/driver
protocol (``driver_protocol``), the machine and versions (``machine``), statistics
(``stats``), markdown reports (``report``) and options from a dataclass (``options``)."""
