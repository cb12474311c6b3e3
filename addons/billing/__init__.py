"""Customer billing: holds, meters applied to requests, auto top-up."""
