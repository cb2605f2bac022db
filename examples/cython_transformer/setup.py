"""Build the example against the installed reflux_core: pip install --no-build-isolation ."""
import os
import sys

from Cython.Build import cythonize
from setuptools import Extension, setup

try:
    import reflux_core
except ImportError as exc:
    sys.exit(f"hotpath is built against the installed reflux_core ({exc}): run "
             f"pip install --no-build-isolation . in the environment where reflux is installed")

# where Cython finds `cimport reflux_core.transform` (the folder holding the
# installed package; needed when it is not a plain sys.path entry, e.g. editable)
site = os.path.dirname(os.path.dirname(os.path.abspath(reflux_core.__file__)))

setup(
    name="reflux-hotpath-example",
    version="0.1",
    ext_modules=cythonize(
        [Extension("hotpath", ["hotpath.pyx"], include_dirs=[reflux_core.get_include()])],
        include_path=[site],
        compiler_directives={"language_level": 3},
    ),
)
