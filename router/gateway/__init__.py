"""The WebSocket gateway: phones and browsers reach the router through it.

One ``router gateway`` process holds many app connections and is one GATEWAY
principal to the router: it binds each connected app's address on its router
connection, resumes a returning app from its last sequence, conflates positions per
app, sends what apps send with their own address, and serves the three web apps.
The JSON frame protocol is docs/GATEWAY.md (constants: :mod:`router.gateway.frames`).
"""
