"""Evaluation: the class scorers, classification metrics, the comparison report (HTML, Markdown, table)
and the evaluate entrypoint."""
