"""The bottom layer every other one reads: settings, the provider catalog, the error tree, atomic files."""
