"""What an operator sees of the running daemon: Prometheus metrics, OpenTelemetry traces and the pod start
timeline. Nothing here changes what the runtime does; core code only reports phases through `trace.phase`."""
