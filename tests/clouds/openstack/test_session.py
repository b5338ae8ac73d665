"""Every thread's openstacksdk connection on one keystone session (the test cloud's HA deploy
test counts its tokens); here, offline, what sharing must not do: close the session when a
thread's connection is collected."""

import gc

import openstack.connection
import requests

from k8simg.clouds.openstack.connect import share_session


def test_a_threads_connection_shares_the_session_and_never_closes_it(monkeypatch):
    closed = []
    close = requests.Session.close
    monkeypatch.setattr(requests.Session, "close",
                        lambda self: (closed.append(self), close(self))[1])
    first = openstack.connection.Connection(auth_type="none", region_name="r",
                                            auth={"endpoint": "http://127.0.0.1:9"})
    session = first.session
    sibling = share_session(first)
    assert sibling.session is session  # its token, catalog and discovered endpoints
    del sibling
    gc.collect()  # as the collector may, in any thread, while the others use the session
    assert closed == []
    del first
    gc.collect()
    assert closed == [session.session]  # the first connection's to close, once
