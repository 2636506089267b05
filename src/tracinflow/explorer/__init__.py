"""The influence explorer: a static page per version (``explorer/index.html``) that opens from the
file system and lets a person click through the test images, their proponents and opponents, the
training images and the mislabel suspects, and download marks as a cleaning list.

:mod:`.payload` turns a version's tables into the page's data; :mod:`.thumbnails` makes the small
images; :mod:`.page` writes the folder (the page's script and style ship in ``assets/``).
"""
