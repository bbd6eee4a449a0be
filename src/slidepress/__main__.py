from slidepress.cli.main import run

run()
