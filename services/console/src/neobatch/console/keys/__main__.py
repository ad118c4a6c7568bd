"""`python -m neobatch.console.keys`: the API key admin CLI (cli.py)."""

from neobatch.console.keys.cli import main

if __name__ == "__main__":
    main()
