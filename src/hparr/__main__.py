from hparr.cli import run

run()
