"""Model roots of the ``paper`` profile: roles, the manifest, verified loading, and a tiny root for tests.

- ``roles``: each role (e.g. the landmark ControlNet), its file layout and the authors' choice.
- ``root``: ``ModelRoot`` (verified local folders of a local or ``s3://`` root), ``check_root``,
  ``index_root`` (write a manifest).
- ``diffusion``: diffusers components of a root (bases, VAE, ControlNets, the ID adapter).
- ``tiny``: a complete root of tiny random models of the real classes.
"""

from .roles import ROLES, Role
from .root import ModelRoot, RoleStatus, check_root, index_root

__all__ = ["ROLES", "Role", "ModelRoot", "RoleStatus", "check_root", "index_root"]
