"""The `rest` console script: one module per command (inspect, pipeline, evaluate, report, reward), the tables it
prints (tables), how it stops on a signal (signals), and the parser and dispatch (main)."""
