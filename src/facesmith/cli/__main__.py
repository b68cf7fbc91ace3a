"""`python -m facesmith.cli`: how `facesmith train --num-processes N` relaunches itself."""

from facesmith.cli import main

main()
