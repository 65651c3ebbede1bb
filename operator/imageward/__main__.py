from imageward import cli

cli.entry()
