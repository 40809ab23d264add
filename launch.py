"""mmgin launcher: `python launch.py --gin_file=gin/example.gin` (or under torchrun)."""

from mmgin import cli

if __name__ == "__main__":
    cli.console_main()
