"""`tollgate`: the operator's command line, a thin shell over addons.services."""
