"""`sluice report`: the SLA from a Prometheus that scrapes the suite, and benchmark results,
as Markdown with PNG charts (docs/operations.md, "Reports")."""
