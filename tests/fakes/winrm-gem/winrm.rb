# A stand-in for the winrm gem, which Debian does not package. Vagrant's winrm communicator
# requires it (with winrm-fs and winrm-elevated) as soon as a machine whose communicator is
# "winrm" is loaded, `vagrant validate` included. This defines only the names the communicator
# refers to while it loads; nothing here can talk to a guest. Put this directory on RUBYLIB.
class HTTPClient
  class KeepAliveDisconnected < StandardError; end
  class TimeoutError < StandardError; end
end

module WinRM
  class WinRMHTTPTransportError < StandardError; end
  class WinRMAuthorizationError < StandardError; end
  class WinRMWSManFault < StandardError; end

  class Connection
    def initialize(*)
      raise NotImplementedError, "postroj's test stand-in for the winrm gem cannot connect to a guest"
    end
  end

  module FS
    class FileManager
      def initialize(*)
        raise NotImplementedError, "postroj's test stand-in for the winrm gem cannot copy files"
      end
    end
  end
end
