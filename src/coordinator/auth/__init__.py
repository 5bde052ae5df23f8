"""The trust boundary: who is calling (authentication), what they may do (authorization),
and how much (quotas).

``principal`` holds the caller of the current call; handlers and the task store ask it,
never the transport.
"""
