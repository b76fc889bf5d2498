//
// test/common/tls.hpp
//
// TLS contexts for in-process peers: a fresh P-256 key with a self-signed
// certificate for CN=serq.test, a server context using it and a client
// context that trusts it. Works with either Asio flavour.
//

#ifndef SERQ_TEST_COMMON_TLS_HPP
#define SERQ_TEST_COMMON_TLS_HPP

#define SERQ_TEST_NET_SSL  // net::ssl (see common/net.hpp)

#include "common/net.hpp"
#include "common/socket_buffers.hpp"

#include <boost/test/unit_test.hpp>

#include <openssl/evp.h>
#include <openssl/x509.h>

#include <memory>
#include <utility>

namespace serq_test {

struct pkey_deleter {
  void operator()(EVP_PKEY* p) const noexcept { EVP_PKEY_free(p); }
};
struct x509_deleter {
  void operator()(X509* p) const noexcept { X509_free(p); }
};

// A fresh P-256 key and a self-signed certificate for CN=serq.test.
inline std::pair<std::unique_ptr<EVP_PKEY, pkey_deleter>, std::unique_ptr<X509, x509_deleter>>
make_self_signed() {
  std::unique_ptr<EVP_PKEY, pkey_deleter> key(EVP_EC_gen("P-256"));
  BOOST_REQUIRE(key);
  std::unique_ptr<X509, x509_deleter> cert(X509_new());
  BOOST_REQUIRE(cert);
  BOOST_REQUIRE(X509_set_version(cert.get(), 2) == 1);
  BOOST_REQUIRE(ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), 1) == 1);
  BOOST_REQUIRE(X509_gmtime_adj(X509_getm_notBefore(cert.get()), -60));
  BOOST_REQUIRE(X509_gmtime_adj(X509_getm_notAfter(cert.get()), 3600));
  BOOST_REQUIRE(X509_set_pubkey(cert.get(), key.get()) == 1);
  X509_NAME* name = X509_get_subject_name(cert.get());
  BOOST_REQUIRE(X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                                           reinterpret_cast<const unsigned char*>("serq.test"), -1,
                                           -1, 0) == 1);
  BOOST_REQUIRE(X509_set_issuer_name(cert.get(), name) == 1);
  BOOST_REQUIRE(X509_sign(cert.get(), key.get(), EVP_sha256()) > 0);
  return {std::move(key), std::move(cert)};
}

// A server context with a fresh certificate and a client context that
// verifies the server against it.
struct tls_contexts {
  serq::net::ssl::context server{serq::net::ssl::context::tls_server};
  serq::net::ssl::context client{serq::net::ssl::context::tls_client};

  tls_contexts() {
    auto [key, cert] = make_self_signed();
    BOOST_REQUIRE(SSL_CTX_use_certificate(server.native_handle(), cert.get()) == 1);
    BOOST_REQUIRE(SSL_CTX_use_PrivateKey(server.native_handle(), key.get()) == 1);
    BOOST_REQUIRE(X509_STORE_add_cert(SSL_CTX_get_cert_store(client.native_handle()), cert.get()) ==
                  1);
    client.set_verify_mode(serq::net::ssl::verify_peer);
  }
};

using tls_tcp_stream = serq::net::ssl::stream<serq::net::ip::tcp::socket>;

// A loopback TCP connection with TLS at both ends, handshaken: the client is
// an owning Writer (a serq::queued_writer<tls_tcp_stream>) made from its
// socket and tls.client, which runs its handshake through the writer's
// queue; the server is a tls_tcp_stream. wrap(handler) wraps the client's
// handshake handler (a serq_test::handler_tracker's, for example). Runs ioc.
template <class Writer>
struct tls_connection {
  std::unique_ptr<Writer> writer;
  tls_tcp_stream server;

  template <class Wrap>
  static tls_connection connect(serq::net::io_context& ioc, tls_contexts& tls, Wrap&& wrap) {
    using tcp = serq::net::ip::tcp;
    tcp::acceptor acceptor(ioc, tcp::endpoint(serq::net::ip::address_v4::loopback(), 0));
    tcp::socket client_socket(ioc);
    client_socket.connect(acceptor.local_endpoint());
    tcp::socket server_socket = acceptor.accept();
    // Tests whose server does not read need large writes to stay in flight, whatever the host's
    // TCP autotuning would allow.
    shrink_socket_buffers(client_socket, server_socket);
    tls_connection c{std::make_unique<Writer>(std::move(client_socket), tls.client),
                     tls_tcp_stream(std::move(server_socket), tls.server)};
    error_code client_hs = serq::net::error::fault, server_hs = serq::net::error::fault;
    c.writer->async_enqueue(c.writer->next_layer().async_handshake(
                                serq::net::ssl::stream_base::client, serq::net::deferred),
                            wrap([&](error_code ec) { client_hs = ec; }));
    c.server.async_handshake(serq::net::ssl::stream_base::server,
                             [&](error_code ec) { server_hs = ec; });
    ioc.restart();
    ioc.run();
    BOOST_REQUIRE(!client_hs);
    BOOST_REQUIRE(!server_hs);
    return c;
  }
  static tls_connection connect(serq::net::io_context& ioc, tls_contexts& tls) {
    return connect(ioc, tls, [](auto&& h) { return std::forward<decltype(h)>(h); });
  }
};

}  // namespace serq_test

#endif  // SERQ_TEST_COMMON_TLS_HPP
