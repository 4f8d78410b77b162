"""``python -m gramophone`` is the ``gramophone`` command."""

import sys

from gramophone.cli import main

sys.exit(main())
