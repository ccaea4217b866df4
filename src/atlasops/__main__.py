from atlasops.cli import main

main()
