"""TODO"""

ENDPOINTS = []
