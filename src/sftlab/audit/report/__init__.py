"""The audit report: sections (data + HTML + Markdown + findings), plots, and the three report files."""
