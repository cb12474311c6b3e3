"""What Tollgate does to the machine it runs on: capture rules, capture-mode checks, CA trust."""
