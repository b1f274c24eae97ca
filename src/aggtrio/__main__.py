from aggtrio.cli import main

main()
