"""placeholder"""
MAX_JSON_DEPTH = 128
