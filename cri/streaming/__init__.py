"""The streaming server: exec, attach and port-forward sessions behind the URLs the CRI calls return.

    server.StreamingServer(config.streaming, backend)   start() / stop() / url_for_exec|attach|port_forward(request)
    backend.StreamingBackend                           what the core provides (cri/core/streams/ implements it)
    spdy           SPDY/3.1 framing and connections (kubelet's and critest's transport)
    remotecommand  exec/attach protocols v1-v4 over SPDY, and the session logic every transport shares
    portforward    portforward.k8s.io over SPDY
    websocket      channel protocols over WebSocket: v5/v4/base64 exec and attach, v4 port-forward
    tunnel         port-forward's SPDY inside WebSocket messages (SPDY/3.1+portforward.k8s.io)
    tokens         single-use, one-minute tokens in the URLs
"""
