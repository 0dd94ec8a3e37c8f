"""Work on a whole domain: its rbd disks taken together, through libvirt for the domain and Ceph for the disks.

``snapshot`` takes every disk at one instant; ``request`` checks what it is asked (light: the CLI loads it first).
"""
