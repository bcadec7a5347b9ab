"""The review server (``server``: JSON API, image chips) and its page (``page``, rendered
from the HTML, CSS and JavaScript files in ``static/``).

May import ``candidates`` (the store it reads and writes), ``scenes`` (chips are cut from
the source scenes) and ``errors``. It never imports torch.
"""
