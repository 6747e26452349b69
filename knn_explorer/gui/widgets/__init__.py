"""Widgets the pages share: the token strip and inspector, plots, tables, method panels."""
